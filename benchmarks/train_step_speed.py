"""Speed of S's supervised training step on this CPU: eager against torch.compile, bf16 autocast against
fp32, today's widths against Cellpose's (issue #22: more learning per CPU minute).

The step is the refinement phase's (train/refine.py): S forward under autocast on channels-last
activations, Cellpose's flow + cellprob loss (masked_flow_loss), backward and one Adam update, on a
batch of 8 crops of 128 px. Each configuration runs in its own process (a compile failure is recorded,
not fatal; TORCHINDUCTOR_CACHE_DIR points into a temporary folder, so each compile starts cold):

    python benchmarks/train_step_speed.py [--steps 20] [--threads 2]
        [--out benchmarks/results/train-step-speed]

Results: NAME.json (raw, with machine info) and NAME.md: ms per step after 3 warm-up steps (the
first step, which holds the compile, is reported on its own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
WIDTHS = {"today (16-128)": "16,32,64,128", "Cellpose (32-256)": "32,64,128,256"}


def child(args: argparse.Namespace) -> None:
    """One configuration: print one JSON line."""
    import torch

    from cyclepose_deploy.nets.segmenter import Segmenter
    from cyclepose_deploy.train.loop import autocast_dtype
    from cyclepose_deploy.train.refine import masked_flow_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, layout = torch.device("cpu"), torch.channels_last
    dtype = autocast_dtype(args.precision, device)
    net = Segmenter(1, [int(w) for w in args.widths.split(",")], 17.0).to(device, memory_format=layout)
    run = torch.compile(net) if args.compile else net
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    images = torch.randn(8, 1, 128, 128).contiguous(memory_format=layout)
    target = torch.rand(8, 4, 128, 128)
    target[:, 3] = 0.0  # no ignored pixels

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            output = run(images).float()
        loss = masked_flow_loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per = (time.perf_counter() - start) / args.steps
    print(json.dumps({"first_s": first, "ms_per_step": per * 1000, "dtype": str(dtype)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train-step-speed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--widths", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from machine import machine_info

    machine = machine_info()  # before the runs: the load average of a quiet machine
    rows: list[dict[str, Any]] = []
    for name, widths in WIDTHS.items():
        for precision in ("auto", "fp32"):
            for compiled in (False, True):
                with tempfile.TemporaryDirectory() as cache:
                    cmd = [sys.executable, __file__, "--child", "--widths", widths, "--precision", precision]
                    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
                    cmd += ["--compile"] if compiled else []
                    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "XDG_CACHE_HOME": cache}
                    row: dict[str, Any] = {"widths": name, "precision": precision, "compile": compiled}
                    try:
                        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
                    except subprocess.TimeoutExpired:
                        done = None
                if done is None:
                    row["error"] = "no result within 30 min"
                elif done.returncode == 0:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                else:
                    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
                    row["error"] = lines[-1] if lines else f"exit {done.returncode}"
                    row["stderr_tail"] = lines[-12:]
                rows.append(row)
                print(row, flush=True)
    report = {"machine": machine, "steps": args.steps, "threads": args.threads, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(_markdown(report))


def _markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# S's training step: eager vs torch.compile (`benchmarks/train_step_speed.py`)",
        "",
        f"Machine: {machine.get('cpu', '?')}, {report['threads']} threads; torch "
        f"{machine.get('libraries', {}).get('torch', '?')}. Batch 8 x 128 px, channels-last, "
        f"Adam; ms per step over {report['steps']} steps after 3 warm-up steps. `auto`: bf16 autocast "
        "where the CPU has native bf16 (as `cyclepose train`), else fp32.",
        "",
        "| S widths | precision | torch.compile | first step s | ms / step |",
        "|---|---|---|--:|--:|",
    ]
    for row in report["rows"]:
        if "error" in row:
            tail = f"failed: {row['error'][:160]} |"
            lines.append(f"| {row['widths']} | {row['precision']} | {row['compile']} | - | {tail}")
            continue
        precision = f"{row['precision']} ({row['dtype'].replace('torch.', '')})"
        lines.append(
            f"| {row['widths']} | {precision} | {row['compile']} | {row['first_s']:.1f} | "
            f"{row['ms_per_step']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
