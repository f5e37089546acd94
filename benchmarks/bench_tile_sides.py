"""Network throughput per tile side, and what fitting the tile side to the image saves (issue #23).

    nice -n 15 .venv/bin/python benchmarks/bench_tile_sides.py --model EXPORT/model.int8.onnx \
        [--repeats 4] [--seconds 2] [--out benchmarks/results/tile-sides]     # writes .json and .md

1. MPix/s of the artifact through the runtime's OrtRunner for square tiles of 256 to 512 px, each call
   holding about 8 x 256^2 px (the batch the runtime sends: worker.ChunkWorker.batches), sides
   interleaved per repeat, median over repeats (random inputs: the speed does not depend on them).
2. The network pixels of working grids (the slide after rescaling) with 256 px tiles and with the
   side tiling.grid.fitted_tile picks (overlap 32), computed, not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

SIDES = (256, 320, 384, 448, 464, 480, 496, 512)
CALL_PIXELS = 8 * 256 * 256
RESULTS = Path(__file__).resolve().parent / "results"
WORKING = (1024, 2144, 2347, 4096, 8192)  # 2144 / 2347: a 2048^2 slide at 19.1 / 17.4 px nuclei


def throughput(model: Path, repeats: int, seconds: float) -> dict[int, list[float]]:
    from cyclepose_deploy.runtime.backends.ort import OrtRunner

    rng = np.random.default_rng(0)
    batches = {
        side: rng.random((max(1, CALL_PIXELS // side**2), 1, side, side), dtype=np.float32) for side in SIDES
    }
    found: dict[int, list[float]] = {side: [] for side in SIDES}
    with OrtRunner(model) as runner:
        for _ in range(repeats):
            for side, batch in batches.items():
                runner.infer(batch)  # warm-up for this shape
                calls, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    runner.infer(batch)
                    calls += 1
                found[side].append(calls * batch[:, 0].size / 1e6 / (time.perf_counter() - start))
    return found


def grids() -> list[dict[str, Any]]:
    from cyclepose_deploy.runtime.tiling.grid import TileGrid, fitted_tile

    rows = []
    for n in WORKING:
        side = fitted_tile((n, n), 256, 32, 2048)
        square, fitted = TileGrid((n, n), 256, 32), TileGrid((n, n), side, 32)
        rows.append(
            {
                "working_px": n,
                "image_mpix": n * n / 1e6,
                "tiles_256": square.total,
                "mpix_256": square.total * 256**2 / 1e6,
                "fitted_side": side,
                "tiles_fitted": fitted.total,
                "mpix_fitted": fitted.total * side**2 / 1e6,
            }
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Tile sides: network MPix/s, and the network pixels fitted tiles save",
        "",
        f"`{result['model']}` through OrtRunner, about {CALL_PIXELS:,} px per call, median of "
        f"{result['repeats']} interleaved repeats of {result['seconds']:g} s each.",
        "",
        "| tile side | tiles per call | MPix/s (median) | runs |",
        "|--:|--:|--:|---|",
    ]
    for side, runs in result["throughput"].items():
        lines.append(
            f"| {side} | {max(1, CALL_PIXELS // int(side) ** 2)} | {statistics.median(runs):.2f} | "
            f"{', '.join(f'{r:.2f}' for r in runs)} |"
        )
    lines += [
        "",
        "| working grid px | image MPix | 256 px tiles | network MPix | fitted side | tiles | network MPix "
        "| saved |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for g in result["grids"]:
        saved = 1 - g["mpix_fitted"] / g["mpix_256"]
        lines.append(
            f"| {g['working_px']}^2 | {g['image_mpix']:.2f} | {g['tiles_256']} | {g['mpix_256']:.2f} | "
            f"{g['fitted_side']} | {g['tiles_fitted']} | {g['mpix_fitted']:.2f} | {saved:.0%} |"
        )
    load = [round(x, 2) for x in m.get("load_average") or []]
    lines += ["", f"Machine: {m.get('cpu', '?')}, {m.get('usable_cores')} usable cores, load average {load}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an .onnx, e.g. EXPORT/model.int8.onnx")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "tile-sides")
    args = parser.parse_args()
    result = {
        "model": args.model.name,
        "repeats": args.repeats,
        "seconds": args.seconds,
        "throughput": throughput(args.model, args.repeats, args.seconds),
        "grids": grids(),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
