"""The committed benchmark suite: one command, one results file per machine.

    python benchmarks/run_suite.py --export EXPORT_DIR [--checkpoint model.pt] [--quick]

Writes benchmarks/results/<machine>.json and .md with (1) the network on every backend and precision
(torch eager as the baseline), (2) end-to-end slide throughput and peak memory of `cyclepose infer`,
(3) flow-dynamics throughput, (4) each precision's mask F1 against fp32 next to its speed.

Trustworthiness: every backend runs in its own process (no shared thread pools, allocators or
imports: torch never loads next to ONNX Runtime), after warm-up iterations, on a realistic normalised
tile; thread counts, ORT session options, load average and library versions are recorded with the result.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, machine_name  # noqa: E402
from suite_parts import accuracy_by_precision, dynamics_rows, slide_rows  # noqa: E402
from suite_report import markdown  # noqa: E402

from cyclepose_deploy.atomic import write_atomic, write_json_atomic  # noqa: E402
from cyclepose_deploy.defaults import TILE  # noqa: E402
from cyclepose_deploy.runtime import benchmark  # noqa: E402
from cyclepose_deploy.runtime.model.artifacts import Model, resolve_models  # noqa: E402
from cyclepose_deploy.synth.tiles import synthetic_tiles  # noqa: E402

SCHEMA = "cyclepose-suite/1"
RESULTS = Path(__file__).resolve().parent / "results"
MODES = {
    "quick": dict(iters=5, warmup=2, batches="1,4", slides=(1024, 2048), dynamics=(1024,), repeats=1),
    "full": dict(
        iters=30, warmup=5, batches="1,8", slides=(2048, 4096, 8192), dynamics=(2048, 4096), repeats=3
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, help="export folder (manifest.json + artifacts) to benchmark")
    p.add_argument("--checkpoint", type=Path, help="checkpoint for the torch baseline (default: shipped one)")
    p.add_argument("--quick", action="store_true", help="small slides, few iterations: a few minutes")
    p.add_argument("--tile", type=int, default=TILE)
    p.add_argument("--threads", type=int, help="CPU threads for every backend (default: all cores)")
    p.add_argument("--providers", default=None, help="ORT providers to try, e.g. cpu,cuda (default: all)")
    p.add_argument("--parts", default="network,slides,dynamics", help="which parts to run")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where <machine>.json/.md go")
    p.add_argument("--work", type=Path, help="scratch folder (default: a fresh temp dir)")
    p.add_argument("--torch-worker", type=Path, help=argparse.SUPPRESS)  # internal: JSON out of the torch run
    p.add_argument("--batch", default=None, help="override the mode's batch sizes, e.g. 1,8")
    p.add_argument("--iters", type=int, default=None, help="override the mode's timed iterations")
    return p.parse_args(argv)


def settings_for(args: argparse.Namespace) -> dict[str, Any]:
    mode = dict(MODES["quick" if args.quick else "full"])
    mode["batches"] = args.batch or mode["batches"]
    mode["iters"] = args.iters or mode["iters"]
    return {"mode": "quick" if args.quick else "full", "tile": args.tile, "threads": args.threads, **mode}


# (1) the network, one process per backend ------------------------------------------------------------
def bench_cli(model: Model, provider: str, s: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    """`cyclepose bench` on one artifact in a fresh process; its JSON rows, or one row saying why not."""
    out = work / f"bench-{model.path.name}-{provider}.json"
    cmd = [
        sys.executable,
        "-m",
        "cyclepose_deploy",
        "bench",
        "--model",
        str(model.path),
        "--providers",
        provider,
    ]
    cmd += ["--tile", str(s["tile"]), "--batch", s["batches"], "--iters", str(s["iters"])]
    cmd += ["--warmup", str(s["warmup"]), "--json", str(out)]
    cmd += ["--threads", str(s["threads"])] if s["threads"] else []
    return _run_json(cmd, out, label=f"{model.path.name} on {provider}")


def bench_torch(checkpoint: Path | None, s: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    """The torch eager baseline, in its own process so that torch's thread pool sees nothing else."""
    out = work / "bench-torch.json"
    cmd = [sys.executable, __file__, "--torch-worker", str(out), "--tile", str(s["tile"])]
    cmd += ["--batch", s["batches"], "--iters", str(s["iters"])] + (
        ["--quick"] if s["mode"] == "quick" else []
    )
    cmd += ["--checkpoint", str(checkpoint)] if checkpoint else []
    cmd += ["--threads", str(s["threads"])] if s["threads"] else []
    return _run_json(cmd, out, label="torch eager")


def _run_json(cmd: list[str], out: Path, label: str) -> list[dict[str, Any]]:
    print(f"[suite] {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        print(f"[suite]   skipped: {reason}", file=sys.stderr)
        return [{"artifact": label, "skipped": reason}]
    return list(json.loads(out.read_text())["results"])


def torch_worker(args: argparse.Namespace) -> None:
    """Runs inside the child process started by bench_torch."""
    import torch

    from cyclepose_deploy.export.torch_runner import TorchRunner

    s = settings_for(args)
    net, channels, source = _torch_net(args.checkpoint)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    runner = TorchRunner(net, channels=channels, threads=args.threads)
    with runner:
        runner.threads = torch.get_num_threads()  # recorded: what torch actually used
        batches = [int(b) for b in s["batches"].split(",")]
        results = benchmark.bench_runner(
            runner,
            artifact=source,
            tile=s["tile"],
            batches=batches,
            iters=s["iters"],
            warmup=s["warmup"],
            make_tiles=synthetic_tiles,
        )
    write_json_atomic(args.torch_worker, benchmark.report(results, settings=s))


def _torch_net(checkpoint: Path | None) -> tuple[Any, int, str]:
    """S from the checkpoint, else an untrained S of the same architecture (same speed, no accuracy)."""
    if checkpoint is not None:
        from cyclepose_deploy.train.checkpoint import load_segmenter

        net, config = load_segmenter(checkpoint)
        return net, int(config.get("in_channels", 1)), f"torch:{checkpoint.name}"
    from cyclepose_deploy.nets.segmenter import Segmenter

    return Segmenter(in_channels=1).eval(), 1, "torch:untrained-S"


def available_providers(requested: str | None) -> list[str]:
    """ORT providers worth timing here: CPU always, CUDA where onnxruntime-gpu sees a GPU."""
    import onnxruntime

    have = onnxruntime.get_available_providers()
    found = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in have else [])
    return [p for p in found if requested is None or p in requested.split(",")]


def network_rows(args: argparse.Namespace, s: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    rows = bench_torch(args.checkpoint, s, work)
    for model in resolve_models([args.export]):
        for provider in available_providers(args.providers) if model.format == "onnx" else ["tensorrt"]:
            rows += bench_cli(model, provider, s, work)
    return rows


# orchestration ---------------------------------------------------------------------------------------
def default_checkpoint() -> Path | None:
    shipped = sorted((Path(__file__).resolve().parents[1] / "cyclepose_deploy" / "models").glob("*.pt"))
    return shipped[0] if shipped else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    s = settings_for(args)
    parts = set(args.parts.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="cyclepose-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result["machine"] = machine_info()
    result["settings"] = {**s, "export": str(args.export), "checkpoint": str(args.checkpoint)}
    if "network" in parts:
        result["network"] = network_rows(args, s, work)
        result["accuracy"] = accuracy_by_precision(args.export)
    if "slides" in parts:
        result["slides"] = slide_rows(args.export, s["slides"], work, threads=s["threads"])
    if "dynamics" in parts:
        result["dynamics"] = dynamics_rows(s["dynamics"], s.get("repeats", 3))
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["suite_seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.checkpoint is None:
        args.checkpoint = default_checkpoint()
    if args.torch_worker is not None:
        torch_worker(args)
        return 0
    if args.export is None or not (args.export / "manifest.json").is_file():
        print("error: --export must name a folder written by `cyclepose export`", file=sys.stderr)
        return 2
    result = run(args)
    name = machine_name(result["machine"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / f"{name}.json", result)
    write_atomic(args.out_dir / f"{name}.md", markdown(result).encode())
    print(markdown(result))
    print(f"[suite] wrote {args.out_dir / name}.json and .md in {result['suite_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
