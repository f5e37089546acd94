"""Peak memory of `cyclepose infer` against slide size: it must be bounded by the chunk, not the slide.

    python benchmarks/bench_memory.py --model EXPORT_DIR/model.onnx [--sizes 4096,8192,16384]

For each size a synthetic slide is streamed to --workdir (reused when present), then `cyclepose infer`
runs in its own process and its peak RSS is read from os.wait4 (the kernel's ru_maxrss of that child
alone). Target: under 1.5 GB at every size, growing < 10 % from the smallest to the largest.
Results go to benchmarks/results/bench_memory.json with the machine details.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402

from cyclepose_deploy.defaults import CHUNK  # noqa: E402

LIMIT_MB = 1536.0
MAX_GROWTH = 0.10


def ensure_slide(workdir: Path, size: int) -> Path:
    from cyclepose_deploy.synth.slide import write_slide

    path = workdir / f"slide_{size}.ome.tif"
    if not path.exists():
        write_slide(path, None, size, size, seed=size)
    return path


def measure(slide: Path, model: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run infer in a child process; peak RSS (MB) of that child from the kernel, wall time, summary."""
    cmd = [
        sys.executable,
        "-m",
        "cyclepose_deploy",
        "infer",
        str(slide),
        "--model",
        model,
        "-o",
        str(out),
        "--overwrite",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"infer failed on {slide} (exit {code}):\n{output[-2000:]}")
    summary = [line for line in output.splitlines() if "objects in" in line or "time per stage" in line]
    return {"peak_rss_mb": usage.ru_maxrss / 1024.0, "seconds": seconds, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "--engine", required=True, help="fp32 .onnx (or an export folder)")
    parser.add_argument("--sizes", default="4096,8192,16384")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_memory"))
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_memory.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        slide = ensure_slide(args.workdir, size)
        row = {
            "size": size,
            **measure(slide, args.model, args.workdir / f"labels_{size}.tif", ["--chunk", str(args.chunk)]),
        }
        print(f"{size:>6}^2  peak RSS {row['peak_rss_mb']:8.1f} MB  {row['seconds']:8.1f} s", flush=True)
        rows.append(row)
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from cyclepose_deploy.atomic import write_json_atomic

    peaks = [r["peak_rss_mb"] for r in rows]
    growth = peaks[-1] / peaks[0] - 1.0
    verdict = {
        "max_peak_mb": max(peaks),
        "growth": growth,
        "passed": max(peaks) < LIMIT_MB and growth < MAX_GROWTH,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.out,
        {
            "engine": args.model,
            "chunk": args.chunk,
            "rows": rows,
            "verdict": verdict,
            "target": {"limit_mb": LIMIT_MB, "max_growth": MAX_GROWTH},
            "machine": machine_info(),
        },
    )
    print(f"max {max(peaks):.0f} MB, growth {100 * growth:+.1f} %: {'PASS' if verdict['passed'] else 'FAIL'}")


if __name__ == "__main__":
    main()
