"""The automatic diameter against the truth: on synthetic slides rendered at known nucleus sizes, and
on the labelled DSB2018 dev images (`--dev`).

Synthetic: for each diameter D, a slide whose nuclei have diameters in [0.85 D, 1.15 D] is segmented by
`cyclepose infer`'s code path twice: with the automatic estimate and with the true median diameter
(`--diameter`). Reports the estimate's error and both F1@0.5 scores.
Dev (`--dev`): the estimate alone (`Segmenter.estimate_diameter`) per image against the median
equivalent-circle diameter of its true labels: images within 15 %, mean |log error|, the worst ratio,
and the estimate's time per image.

    python benchmarks/diameter_check.py --model EXPORT_DIR [--diameters 10,20,40] [--seed 5] \\
        [--dev [DEV_DIR]] [--out benchmarks/results/diameter-check]        # writes .json and .md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import tifffile

from cyclepose_deploy import Segmenter
from cyclepose_deploy.metrics import match_instances
from cyclepose_deploy.runtime.run.diameter import mask_diameter
from cyclepose_deploy.synth.shapes import ShapePrior
from cyclepose_deploy.synth.slide import make_slide


def check(model_path: Path, diameter: float, seed: int, folder: Path) -> dict[str, float]:
    side = int(max(512, diameter * 20))
    image, truth = make_slide(side, side, seed, ShapePrior(0.85 * diameter, 1.15 * diameter))
    slide = folder / f"d{diameter:g}.tif"
    tifffile.imwrite(slide, image, tile=(256, 256))
    true_diameter, count = mask_diameter(truth)
    row: dict[str, float] = {
        "diameter": diameter,
        "side": side,
        "nuclei": count,
        "true_median": true_diameter,
    }
    for name, given in (("auto", None), ("given", true_diameter)):
        out = folder / f"d{diameter:g}-{name}.tif"
        with Segmenter(model_path) as seg:
            summary = seg.segment_file(slide, out, diameter=given)
        row[f"f1_{name}"] = match_instances(tifffile.imread(out), truth, [0.5]).scores[0].f1
        if given is None and summary.diameter is not None:
            row["estimate"] = summary.diameter.diameter
            row["method"] = summary.diameter.method  # type: ignore[assignment]
    row["error"] = row["estimate"] / true_diameter - 1.0
    return row


DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-fluo" / "dev"


def dev_check(model_path: Path, dev: Path, out: Path | None) -> int:
    """The estimate on every dev image against its true median diameter (module docstring)."""
    import math
    import time

    import numpy as np

    rows = []
    with Segmenter(model_path) as seg:
        for image in sorted((dev / "images").glob("*.tif")):
            truth, _ = mask_diameter(tifffile.imread(dev / "labels" / image.name))
            start = time.perf_counter()
            estimate = seg.estimate_diameter(image)
            seconds = time.perf_counter() - start
            found = estimate.diameter if estimate is not None else float("nan")
            rows.append({"image": image.name, "truth": truth, "estimate": found, "seconds": seconds})
    errors = [abs(math.log(r["estimate"] / r["truth"])) for r in rows if math.isfinite(r["estimate"])]
    summary = {
        "images": len(rows),
        "within_15_percent": sum(e < math.log(1.15) for e in errors),
        "no_estimate": len(rows) - len(errors),
        "mean_abs_log_error": float(np.mean(errors)),
        "worst_ratio": float(math.exp(max(errors))),
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
    }
    text = (
        f"{summary['within_15_percent']} of {summary['images']} dev images within 15 % of the true median "
        f"diameter; mean |log error| {summary['mean_abs_log_error']:.3f}; "
        f"worst {summary['worst_ratio']:.2f}x; {summary['seconds_per_image']:.2f} s per image"
    )
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(
            json.dumps({"model": str(model_path), "summary": summary, "rows": rows}, indent=1)
        )
        out.with_suffix(".md").write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--diameters", default="10,20,40")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dev", nargs="?", const=DEV, type=Path, default=None)
    args = parser.parse_args(argv)
    if args.dev is not None:
        return dev_check(args.model, args.dev, args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in (float(v) for v in args.diameters.split(",")):
            rows.append(check(args.model, d, args.seed, Path(tmp)))
    lines = [
        "| rendered D | true median | estimate | error | F1@0.5 auto | F1@0.5 true D | difference |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['diameter']:g} | {r['true_median']:.1f} | {r['estimate']:.1f} ({r['method']}) "
            f"| {100 * r['error']:+.1f} % | {r['f1_auto']:.3f} | {r['f1_given']:.3f} "
            f"| {r['f1_auto'] - r['f1_given']:+.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(
            json.dumps({"model": str(args.model), "rows": rows}, indent=1)
        )
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
