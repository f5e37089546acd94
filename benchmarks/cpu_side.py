"""The CPU side of `cyclepose infer` on its own: everything but the network, with a zero-cost runner.

On a GPU server or a Jetson the network is cheap and the CPU side (reading, normalisation, tiling,
blending, the dynamics, the object checks, the outputs) sets the throughput. This benchmark runs the
real pipeline with a runner that returns stored network outputs, so the network costs nothing:

- the slide is periodic with the tile grid's stride (a synthetic patch repeated), and the diameter is
  the model's own (no rescaling), so every interior tile sees the same pixels; the replay runner keys
  stored outputs by the tiles' bytes and runs the real network only for tiles it has not seen (a warm-up
  run fills the store), so the timed runs return real network outputs at no cost;
- each configuration runs in a fresh process pinned to 1 or 2 cores (taskset), whole-process wall
  time, the process's CPU time and the run's own stage times (threads overlap) are recorded, median
  of --repeats runs. On a machine shared with other work, MPix per CPU-second is the steadier figure:
  wall time then also counts the time other processes hold the cores.

    python benchmarks/cpu_side.py --model EXPORT_DIR [--sizes 2048,8192] [--cores 1,2] [--repeats 3]
        [--out benchmarks/results/cpu-side]

Results: NAME.json (raw, with machine info) and NAME.md (MPix/s per stage and in total).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
STAGES = ("normalize", "diameter", "tissue", "read", "network", "blend", "dynamics", "scratch", "write")


def periodic_slide(size: int, period: int, seed: int = 2) -> np.ndarray:
    """A (size, size) uint16 slide: a synthetic patch of period x period px repeated."""
    from cyclepose_deploy.synth.slide import make_slide

    patch, _ = make_slide(period, period, seed)
    reps = -(-size // period)
    return np.tile(patch, (reps, reps))[:size, :size]


class ReplayRunner:
    """Factory of the zero-cost runner (a runtime Runner built lazily, see `make`)."""

    @staticmethod
    def make(inner: Any, store: dict[bytes, np.ndarray]) -> Any:
        from cyclepose_deploy.runtime.backends.base import Runner

        class Replay(Runner):
            """Stored outputs by tile bytes; the inner (real) runner only for unseen tiles."""

            def __init__(self) -> None:
                super().__init__(
                    f"replay:{inner.name}", device="cpu", precision=inner.precision, channels=inner.channels
                )
                self.misses = 0

            def activate_impl(self) -> None:
                inner.activate()
                self.channels = inner.channels

            def _probe(self) -> None:
                """The inner runner was probed when it was activated."""

            def infer_impl(self, batch: np.ndarray) -> np.ndarray:
                keys = [hashlib.blake2b(tile.tobytes(), digest_size=16).digest() for tile in batch]
                missing = [k for k, key in enumerate(keys) if key not in store]
                if missing:
                    self.misses += len(missing)
                    out = inner.infer(np.ascontiguousarray(batch[missing]))
                    for k, o in zip(missing, out, strict=True):
                        store[keys[k]] = o.copy()
                return np.stack([store[key] for key in keys])

        return Replay()


def child(args: argparse.Namespace) -> None:
    """One measured process: warm the store, then time the runs; print one JSON line."""
    import tifffile

    from cyclepose_deploy import Segmenter

    folder = Path(args.folder)
    slide = folder / f"slide{args.size}.tif"
    if not slide.exists():
        tifffile.imwrite(slide, periodic_slide(args.size, 256 - 32), tile=(256, 256), compression="zlib")
    store: dict[bytes, np.ndarray] = {}
    with Segmenter(args.model) as seg:
        seg._runner = ReplayRunner.make(seg.runner(), store)  # noqa: SLF001 (the benchmark's zero-cost runner)
        seg._runner.activate()
        diameter = seg.model.train_diameter
        runs = []
        for k in range(args.repeats + 1):
            out = folder / f"labels{args.size}-{k}.tif"
            start, cpu = time.perf_counter(), time.process_time()
            objects = folder / f"o{k}.csv"
            result = seg.segment_file(slide, out, diameter=diameter, objects=objects, overwrite=True)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            runs.append(
                {
                    "wall": wall,
                    "cpu": cpu,
                    "stages": dict(result.times),
                    "objects": result.objects,
                    "misses": 0,
                }
            )
            runs[-1]["misses"] = seg._runner.misses  # noqa: SLF001
            seg._runner.misses = 0  # noqa: SLF001
    print(json.dumps({"size": args.size, "cores": args.cores, "warmup": runs[0], "runs": runs[1:]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", default="2048,8192")
    parser.add_argument("--cores", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-side")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from machine import machine_info

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for cores in (int(c) for c in args.cores.split(",")):
                cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])
                cmd = ["taskset", "-c", cpus, sys.executable, __file__, "--child", "--model", args.model]
                cmd += ["--size", str(size), "--folder", tmp, "--repeats", str(args.repeats)]
                env = {**os.environ, "OMP_NUM_THREADS": str(cores), "NUMBA_NUM_THREADS": str(cores)}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["cores"] = cores
                results.append(row)
                print(_line(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "model": args.model, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(_markdown(report))


def _median(row: dict[str, Any], key: str) -> float:
    if key in ("wall", "cpu"):
        return statistics.median(r.get(key, 0.0) for r in row["runs"])
    return statistics.median(r["stages"].get(key, 0.0) for r in row["runs"])


def _line(row: dict[str, Any]) -> str:
    mpix = row["size"] ** 2 / 1e6
    wall, cpu = _median(row, "wall"), _median(row, "cpu")
    return (
        f"{row['size']}^2, {row['cores']} core(s): {wall:.2f} s, {mpix / wall:.2f} MPix/s, "
        f"{mpix / max(cpu, 1e-9):.2f} MPix/CPU-s"
    )


def _markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# CPU side of `cyclepose infer` (zero-cost runner)",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} usable cores; model "
        f"{report['model']}. Median of the timed runs; stage times overlap (threads), MPix/s = slide "
        "MPix / stage seconds; total = slide MPix / whole-run wall time (the network costs nothing); "
        "MPix/CPU-s = slide MPix / the process's CPU seconds (all threads).",
        "",
        "| slide | cores | total MPix/s | wall s | MPix/CPU-s | " + " | ".join(STAGES) + " |",
        "|---|--:|--:|--:|--:|" + "--:|" * len(STAGES),
    ]
    for row in report["results"]:
        mpix = row["size"] ** 2 / 1e6
        wall, cpu = _median(row, "wall"), _median(row, "cpu")
        per_cpu = f"{mpix / cpu:.2f}" if cpu > 0 else "-"
        cells = []
        for stage in STAGES:
            seconds = _median(row, stage)
            cells.append(f"{mpix / seconds:.1f}" if seconds > 1e-3 else "-")
        head = f"| {row['size']}^2 | {row['cores']} | {mpix / wall:.2f} | {wall:.2f} | {per_cpu} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
