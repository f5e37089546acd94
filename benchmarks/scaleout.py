"""Scale-out: MPix/s and peak memory per process with 1 and 2 Dask workers against the single-process
run, the time saved by skipping empty chunks, and the expected scaling to 16 and 64 workers.

    python benchmarks/scaleout.py --model EXPORT_DIR [--size 8192] [--empty-size 4096] \
        [--workdir /tmp/cyclepose-scaleout] [--out benchmarks/results/scaleout]

Each configuration runs in its own process (`--one`), which starts its own LocalCluster so it can read
every worker's peak RSS (getrusage in the worker) beside the driver's. The diameter is given
(--diameter 20, the synthetic slides' size), so the runs time pass 1 and pass 2, not the estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DIAMETER = 20.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(config: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process; returns its figures."""
    import logging

    from cyclepose_deploy import Segmenter
    from cyclepose_deploy.runtime.backends.ort import usable_cores

    workers = config["workers"]
    out = Path(config["out"])
    address, cluster, client = None, None, None
    if workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR
        )
        client = Client(cluster)
        address = cluster.scheduler_address
    threads = max(1, usable_cores() // max(workers, 1))
    start = time.perf_counter()
    with Segmenter(config["model"], threads=threads) as seg:
        summary = seg.segment_file(
            config["slide"],
            out,
            diameter=DIAMETER,
            scheduler=address,
            skip_empty=config["skip_empty"],
            overwrite=True,
        )
    seconds = time.perf_counter() - start
    worker_mb = []
    if client is not None:
        worker_mb = [
            v / 1024.0
            for v in client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values()
        ]
        client.close()
        cluster.close()
    h, w = summary.shape
    return {
        "workers": workers,
        "skip_empty": config["skip_empty"],
        "seconds": seconds,
        "mpix_per_s": h * w / 1e6 / seconds,
        "objects": summary.objects,
        "chunks": summary.chunks,
        "chunks_skipped": summary.skipped,
        "times": summary.times,
        "driver_peak_mb": peak_mb(),
        "worker_peak_mb": worker_mb,
    }


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"configuration {config} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sparse_slide(path: Path, size: int, tissue_fraction: float) -> None:
    """A slide whose top `tissue_fraction` of rows holds nuclei, the rest camera noise (empty glass)."""
    import numpy as np
    import tifffile

    from cyclepose_deploy.synth.slide import make_slide

    rows = int(size * tissue_fraction)
    tissue, _ = make_slide(rows, size, seed=11)
    rng = np.random.default_rng(0)
    background = float(np.percentile(tissue, 5))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:

        def tiles() -> Any:
            for y in range(0, size, 512):
                for x in range(0, size, 512):
                    block = rng.normal(background, 3.0, (512, 512)).clip(0).astype(np.uint16)
                    if y < rows:
                        part = tissue[y : min(y + 512, rows), x : x + 512]
                        block[: part.shape[0], : part.shape[1]] = part
                    yield block

        tif.write(tiles(), shape=(size, size), dtype=np.uint16, tile=(512, 512))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--empty-size", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cyclepose-scaleout"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaleout")
    parser.add_argument(
        "--parts", default="dask,empty", help="dask, empty or both; a part not run keeps its earlier figures"
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    from machine import machine_info

    from cyclepose_deploy.synth.slide import write_slide

    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"slide_{args.size}.ome.tif"
    if not slide.exists():
        write_slide(slide, None, args.size, args.size, seed=args.size)
    sparse = args.workdir / f"sparse70_{args.empty_size}.tif"
    if not sparse.exists():
        sparse_slide(sparse, args.empty_size, 0.3)
    base = {"model": args.model, "skip_empty": True}
    parts = set(args.parts.split(","))
    saved = args.out.with_suffix(".json")
    earlier = json.loads(saved.read_text()) if saved.exists() else {}
    runs = dict(earlier.get("runs", {}))
    if "dask" in parts:
        for name, workers, out in (("single", 0, "a.tif"), ("dask-1", 1, "b.tif"), ("dask-2", 2, "c.tif")):
            config = {**base, "slide": str(slide), "workers": workers, "out": str(args.workdir / out)}
            runs[name] = run_child(config)
    if "empty" in parts:
        config = {**base, "slide": str(sparse), "workers": 0}
        runs["empty-skip"] = run_child({**config, "out": str(args.workdir / "d.tif")})
        runs["empty-noskip"] = run_child({**config, "skip_empty": False, "out": str(args.workdir / "e.tif")})
    import tifffile

    def equal(a: str, b: str) -> bool:
        return bool((tifffile.imread(args.workdir / a) == tifffile.imread(args.workdir / b)).all())

    same = equal("a.tif", "c.tif") if "dask" in parts else earlier.get("labels_equal_single_vs_dask2")
    same_empty = equal("d.tif", "e.tif")
    one_worker = runs["dask-1"]
    pass_one = one_worker["times"].get("cluster", 0.0)
    driver = one_worker["seconds"] - pass_one
    per_chunk = pass_one / max(one_worker["chunks"] - one_worker["chunks_skipped"], 1)
    chunks = one_worker["chunks"] - one_worker["chunks_skipped"]
    scan_chunks = math.ceil(100_000 / 2048) * math.ceil(50_000 / 2048)
    scan_driver = driver * (100_000 * 50_000) / (args.size**2)
    paper = {
        str(n): {
            "slide_seconds": driver + math.ceil(chunks / n) * per_chunk,
            "scan_100k_x_50k_seconds": scan_driver + math.ceil(scan_chunks / n) * per_chunk,
        }
        for n in (1, 2, 16, 64)
    }
    result = {
        "runs": runs,
        "labels_equal_single_vs_dask2": same,
        "labels_equal_skip_vs_noskip": same_empty,
        "empty_slide": f"{args.empty_size}x{args.empty_size}, top 30 % of rows nuclei, the rest camera noise",
        "model": args.model,
        "per_chunk_seconds_1_worker": per_chunk,
        "driver_seconds": driver,
        "expected": paper,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [
        f"# Scale-out, {args.size}x{args.size} synthetic slide (--diameter {DIAMETER:g}), model {args.model}",
        "",
        "| run | seconds | MPix/s | driver peak MB | worker peak MB |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {name} | {r['seconds']:.1f} | {r['mpix_per_s']:.3f} | {r['driver_peak_mb']:.0f} | "
            f"{', '.join(f'{m:.0f}' for m in r['worker_peak_mb']) or '-'} |"
            for name, r in runs.items()
            if not name.startswith("empty")
        ),
        "",
        f"Labels of the single-process run and of 2 workers are identical: {same}.",
        "",
        f"70 % empty {args.empty_size}x{args.empty_size} slide: "
        f"{runs['empty-noskip']['seconds']:.1f} s without "
        f"skipping, {runs['empty-skip']['seconds']:.1f} s skipping {runs['empty-skip']['chunks_skipped']} of "
        f"{runs['empty-skip']['chunks']} chunks "
        f"({100 * (1 - runs['empty-skip']['seconds'] / runs['empty-noskip']['seconds']):.0f} % saved); "
        f"objects {runs['empty-noskip']['objects']} vs {runs['empty-skip']['objects']}, labels identical: "
        f"{same_empty}.",
        "",
        f"On paper (1 worker: {per_chunk:.1f} s per 2048 px chunk, driver {driver:.1f} s for this slide, its "
        "share growing with the pixels): T(N) = driver + ceil(chunks / N) x per-chunk",
        "",
        "| workers | this slide (s) | 100,000 x 50,000 scan (s) |",
        "|--:|--:|--:|",
        *(
            f"| {n} | {v['slide_seconds']:.0f} | {v['scan_100k_x_50k_seconds']:.0f} |"
            for n, v in paper.items()
        ),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
