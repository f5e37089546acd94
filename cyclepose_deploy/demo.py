"""The README's first command: the whole product end to end on an embedded default, no GPU, no downloads.

synthetic slide -> shipped CyclePose checkpoint -> export (ONNX fp32/fp16/int8, verified) -> tiled infer
with the best CPU artifact -> eval against ground truth -> tile benchmark -> summary.
Each step runs the real `cyclepose` command, printed first, so a newcomer sees what to type.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

SHIPPED_CHECKPOINT = Path(__file__).parent / "models" / "cyclepose-synth.pt"
DEMO_SEED = 2026


def run(step: str, args: list[str]) -> float:
    """Run one `cyclepose` command, echoing it; stop the demo with its exit code if it fails."""
    print(f"\n== {step}\n$ cyclepose {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cyclepose_deploy", *args])
    if done.returncode != 0:
        print(f"demo: step '{step}' failed with exit code {done.returncode}", file=sys.stderr)
        raise SystemExit(done.returncode)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    opts = parser.parse_args(argv)
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    slide, truth = out / "slide.ome.tif", out / "truth.tif"
    export_dir, labels = out / "export", out / "labels.ome.tif"
    objects, preview = out / "objects.csv", out / "preview.png"
    eval_json, bench_json, infer_json = out / "eval.json", out / "bench.json", out / "infer.json"
    times: dict[str, float] = {}
    start = time.perf_counter()
    times["synth"] = run(
        "1/5 synthetic slide with ground truth",
        ["synth", str(slide), "--size", str(opts.size), "--labels", str(truth), "--seed", str(DEMO_SEED)],
    )
    times["export"] = run(
        "2/5 export the shipped checkpoint (trained by `cyclepose train`, see docs/train.md)",
        ["export", str(opts.checkpoint), "-o", str(export_dir), "--no-engine"],
    )
    times["infer"] = run(
        "3/5 segment the slide with the best CPU artifact",
        [
            "infer",
            str(slide),
            "--model",
            str(export_dir),
            "-o",
            str(labels),
            "--objects",
            str(objects),
            "--preview",
            str(preview),
            "--summary-json",
            str(infer_json),
            "--overwrite",
        ],
    )
    times["eval"] = run(
        "4/5 accuracy against the ground truth", ["eval", str(labels), str(truth), "--json", str(eval_json)]
    )
    times["bench"] = run(
        "5/5 latency per tile",
        [
            "bench",
            "--model",
            str(export_dir),
            "--batch",
            "1",
            "--iters",
            "20",
            "--warmup",
            "3",
            "--json",
            str(bench_json),
        ],
    )
    print_summary(out, times, time.perf_counter() - start, eval_json, bench_json, infer_json)


def print_summary(
    out: Path, times: dict[str, float], total: float, eval_json: Path, bench_json: Path, infer_json: Path
) -> None:
    scores = json.loads(eval_json.read_text())
    infer = json.loads(infer_json.read_text())
    bench = json.loads(bench_json.read_text())
    f1 = next(t["f1"] for t in scores["thresholds"] if abs(t["iou"] - 0.5) < 1e-9)
    fastest = min(bench["results"], key=lambda r: r["latency_tile_ms"]["median"])
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items())
    print(
        "\n== Summary\n"
        f"objects found      {infer['objects']:,} (ground truth {scores['n_gt']:,})\n"
        f"F1 at IoU 0.5      {f1:.3f}   (mean AP 0.5:0.95 {scores['mean_ap_50_95']:.3f})\n"
        f"slide throughput   {infer['mpix_per_s']:.2f} MPix/s end to end with {infer['model']}\n"
        f"latency per tile   {fastest['latency_tile_ms']['median']:.0f} ms median "
        f"({fastest['tile']}x{fastest['tile']}, batch {fastest['batch']}, {fastest['precision']}, "
        f"{fastest['backend']} on {fastest['device']})\n"
        f"outputs            labels {out / 'labels.ome.tif'}\n"
        f"                   objects {out / 'objects.csv'}\n"
        f"                   preview {out / 'preview.png'}\n"
        f"                   export {out / 'export'} (manifest.json lists each artifact and its checks)\n"
        f"time               {total:.0f} s ({steps})"
    )


if __name__ == "__main__":
    main()
