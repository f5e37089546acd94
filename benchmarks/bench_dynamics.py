"""Speed and exactness of flow dynamics on a synthetic slide: labels -> flows -> labels, whole and chunked.

    python benchmarks/bench_dynamics.py [--size 2048] [--repeats 5] [--seed 3] [--out PATH]

Ground-truth labels come from `synth.slide.make_slide`; flows are their Cellpose flows and the
cell probability is +5 inside, -5 outside, so the figures measure the dynamics alone. After a numba
warm-up, each step runs --repeats times; the report gives the median wall and CPU time and the
megapixels per second of the median (target: flows_to_labels with the flow-error check >= 7 MPix/s on
a 2-core CPU; Cellpose 3.1 does about 1.4 MPix/s there). CPU time is reported beside wall time
because a shared machine's load inflates wall time: load averages before and after are recorded.
Results: benchmarks/results/dynamics-<machine>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, machine_name  # noqa: E402

CHUNK = 512


def timed(func: Callable[[], Any], repeats: int) -> tuple[Any, dict[str, float]]:
    """Run `func` `repeats` times; the last result and median wall/CPU seconds."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = func()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "walls": walls}


def chunked_labels(flows: np.ndarray, cellprob: np.ndarray) -> np.ndarray:
    """The runtime's path: segment_chunk over a grid of 512-px cores with a halo, ids compacted."""
    from cyclepose_deploy.runtime.dynamics import chunk_halo, segment_chunk
    from cyclepose_deploy.synth.shapes import ShapePrior

    height, width = cellprob.shape
    halo = chunk_halo(ShapePrior().max_extent())  # the longest nucleus make_slide's prior can draw
    ids = np.zeros((height, width), np.uint64)
    for y in range(0, height, CHUNK):
        for x in range(0, width, CHUNK):
            y0, x0 = max(0, y - halo), max(0, x - halo)
            y1, x1 = min(height, y + CHUNK + halo), min(width, x + CHUNK + halo)
            core = (slice(y - y0, min(y + CHUNK, height) - y0), slice(x - x0, min(x + CHUNK, width) - x0))
            ids[y : y + CHUNK, x : x + CHUNK] = segment_chunk(
                flows[:, y0:y1, x0:x1],
                cellprob[y0:y1, x0:x1],
                core=core,
                origin=(y0, x0),
                image_shape=(height, width),
            )
    _, compact = np.unique(ids, return_inverse=True)
    return compact.reshape(ids.shape).astype(np.uint32)


def run(size: int, repeats: int, seed: int) -> dict[str, Any]:
    from cyclepose_deploy.metrics import match_instances
    from cyclepose_deploy.runtime.dynamics import flows_to_labels, labels_to_flows
    from cyclepose_deploy.synth.slide import make_slide

    _, truth = make_slide(size, size, seed=seed)
    cellprob = np.where(truth > 0, 5.0, -5.0).astype(np.float32)
    flows_to_labels(labels_to_flows(truth[:256, :256]), cellprob[:256, :256])  # numba warm-up
    load_before = list(os.getloadavg())
    flows, t_flows = timed(lambda: labels_to_flows(truth), repeats)
    labels, t_check = timed(lambda: flows_to_labels(flows, cellprob), repeats)
    _, t_nocheck = timed(lambda: flows_to_labels(flows, cellprob, flow_threshold=0), repeats)
    chunked, t_chunked = timed(lambda: chunked_labels(flows, cellprob), max(1, repeats // 2))
    mpix = size * size / 1e6
    steps = {
        "labels_to_flows": t_flows,
        "flows_to_labels": t_check,
        "flows_to_labels_no_flow_check": t_nocheck,
        f"chunked_{CHUNK}_with_halo": t_chunked,
    }
    for t in steps.values():
        t["mpix_per_s"] = mpix / t["wall_s"]
        t["mpix_per_cpu_s"] = mpix / t["cpu_s"]
    return {
        "image": {"size": [size, size], "seed": seed, "objects": int(truth.max())},
        "repeats": repeats,
        "steps": steps,
        "round_trip_ap_at_0.9": match_instances(labels, truth, thresholds=(0.9,)).at(0.9).ap,
        "chunked_equals_whole": bool(np.array_equal(chunked, labels)),
        "chunked_vs_whole_f1_at_0.9": match_instances(chunked, labels, thresholds=(0.9,)).at(0.9).f1,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from cyclepose_deploy.atomic import write_json_atomic

    machine = machine_info()
    report = {"benchmark": "dynamics", "machine": machine, **run(args.size, args.repeats, args.seed)}
    out = args.out or Path(__file__).parent / "results" / f"dynamics-{machine_name(machine)}.json"
    write_json_atomic(out, report)
    for name, t in report["steps"].items():
        print(
            f"{name:32s} wall {t['wall_s']:.3f} s ({t['mpix_per_s']:.2f} MPix/s)  cpu {t['cpu_s']:.3f} s "
            f"({t['mpix_per_cpu_s']:.2f} MPix/cpu-s)"
        )
    print(
        f"objects {report['image']['objects']}  AP@0.9 {report['round_trip_ap_at_0.9']:.4f}  "
        f"chunked == whole: {report['chunked_equals_whole']}  -> {out}"
    )


if __name__ == "__main__":
    main()
