"""ONNX Runtime CPU throughput of fp32, fp16 and int8 side by side with torch eager, on the same tiles.

    nice -n 15 .venv/bin/python benchmarks/bench_precisions.py [--checkpoint model.pt] [--batch 8]

Full Cellpose widths (random weights: speed does not depend on the values) plus any checkpoint given.
Writes benchmarks/results/bench_precisions.json and .md with the machine details and its load."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def time_runner(runner: Any, batch: np.ndarray, iters: int) -> dict[str, float]:
    """Median and best seconds per batch after one warm-up call."""
    with runner:
        runner.infer(batch)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            runner.infer(batch)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "tiles_per_s": batch.shape[0] / median}


def export_model(net: Any, channels: int, work: Path, tile: int) -> dict[str, Path]:
    from cyclepose_deploy.export.fp16 import convert_fp16
    from cyclepose_deploy.export.int8 import quantize_int8
    from cyclepose_deploy.export.onnx_export import export_fp32
    from cyclepose_deploy.export.tiles import cut_tiles, synthetic_slide

    fp32, _ = export_fp32(net, work / "model.onnx", channels)
    calib = cut_tiles([synthetic_slide(max(512, 2 * tile), channels, seed=7)], tile, 16, seed=3)
    return {
        "fp32": fp32,
        "fp16": convert_fp16(fp32, work / "model.fp16.onnx"),
        "int8": quantize_int8(fp32, work / "model.int8.onnx", calib),
    }


def bench_model(name: str, net: Any, channels: int, args: argparse.Namespace) -> dict[str, Any]:
    from cyclepose_deploy.export.tiles import grid_tiles, synthetic_slide
    from cyclepose_deploy.export.torch_runner import TorchRunner
    from cyclepose_deploy.runtime.backends.ort import OrtRunner

    slide = synthetic_slide(args.tile * 4, channels, seed=11)
    batch = grid_tiles(slide, args.tile)[: args.batch]
    with tempfile.TemporaryDirectory(prefix="bench-precisions-") as tmp:
        paths = export_model(net, channels, Path(tmp), args.tile)
        rows = {"torch eager fp32": time_runner(TorchRunner(net, channels, args.threads), batch, args.iters)}
        for precision, path in paths.items():
            runner = OrtRunner(path, threads=args.threads, precision=precision)
            rows[f"onnxruntime {precision}"] = time_runner(runner, batch, args.iters)
    ort32, eager = rows["onnxruntime fp32"]["median_s"], rows["torch eager fp32"]["median_s"]
    for row in rows.values():
        row["speedup_vs_ort_fp32"] = ort32 / row["median_s"]
        row["speedup_vs_torch"] = eager / row["median_s"]
    params = sum(p.numel() for p in net.parameters())
    return {"model": name, "parameters": params, "batch": list(batch.shape), "backends": rows}


def load_nets(args: argparse.Namespace) -> list[tuple[str, Any, int]]:
    from cyclepose_deploy.nets.segmenter import Segmenter
    from cyclepose_deploy.train.checkpoint import load_segmenter

    nets: list[tuple[str, Any, int]] = [("cellpose widths [32,64,128,256] (random)", Segmenter(1).eval(), 1)]
    for path in args.checkpoint:
        net, config = load_segmenter(path)
        nets.append((f"{Path(path).name} widths {config['widths']}", net, int(config["in_channels"])))
    return nets


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# S forward on CPU: ONNX Runtime fp32 / fp16 / int8 vs torch eager",
        "",
        f"Machine: {m.get('cpu')}, {m.get('usable_cores')} cores, flags {', '.join(m.get('cpu_flags', []))}; "
        f"load average before/after: {report['load_before']} / {report['load_after']} "
        "(shared machine: absolute times are inflated by other jobs; ratios are the figure to read).",
        f"Libraries: {', '.join(f'{k} {v}' for k, v in m.get('libraries', {}).items())}.",
        f"Command: `{report['command']}`",
        "",
    ]
    for res in report["results"]:
        lines += [f"## {res['model']}: batch {res['batch']}, {res['parameters'] / 1e6:.2f} M parameters", ""]
        lines += ["| backend | median s/batch | tiles/s | vs ORT fp32 | vs torch |", "|---|---|---|---|---|"]
        for name, row in res["backends"].items():
            lines.append(
                f"| {name} | {row['median_s']:.3f} | {row['tiles_per_s']:.2f} | "
                f"{row['speedup_vs_ort_fp32']:.2f}x | {row['speedup_vs_torch']:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="Also bench this checkpoint.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_precisions")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    results = [bench_model(name, net, ch, args) for name, net, ch in load_nets(args)]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "settings": {"batch": args.batch, "tile": args.tile, "iters": args.iters, "threads": args.threads},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
