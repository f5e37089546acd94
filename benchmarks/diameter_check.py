"""The automatic diameter against the truth: on synthetic slides rendered at known nucleus sizes, and
on the labelled DSB2018 dev images (`--dev`).

Synthetic: for each diameter D, a slide whose nuclei have diameters in [0.85 D, 1.15 D] is segmented by
`cyclepose infer`'s code path twice: with the automatic estimate and with the true median diameter
(`--diameter`). Reports the estimate's error and both F1@0.5 scores.
Dev (`--dev`): the estimate alone (`Segmenter.estimate_diameter`) per image against the median
equivalent-circle diameter of its true labels: images within 15 %, mean |log error|, the worst ratio,
and the estimate's time per image.

    python benchmarks/diameter_check.py --model EXPORT_DIR [--diameters 10,20,40] [--seed 5] \\
        [--dev [DEV_DIR] [--guesses] | --slides [SEEDS] [--size 2048]] [--apparent A] \\
        [--out benchmarks/results/diameter-check]   # writes .json and .md

`--dev --guesses`: the batch's first guess (`diameter_guess`) on the dev images, right and wrong
(`guess_check`). `--slides`: the estimate alone on synthetic slides of the default size prior (10-30 px
nuclei, a broad distribution; seeds 3,5,7,8,9,11,13,17,21,42) against each slide's true median.
`--apparent`: the estimate's target (runtime.run.scale.APPARENT) for an ablation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
SLIDE_SEEDS = "3,5,7,8,9,11,13,17,21,42"


def write(out: Path | None, payload: dict[str, Any], text: str, title: str) -> None:
    """OUT.json (payload, with the machine and scale.APPARENT) and OUT.md (title, machine line, text)."""
    from machine import machine_info, machine_name

    from cyclepose_deploy.runtime.run import scale

    print(text)
    if out is None:
        return
    info = machine_info()
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "apparent": scale.APPARENT, "machine": info}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    header = f"# {title}\n\nMachine: {machine_name(info)}; scale.APPARENT {scale.APPARENT:g}.\n\n"
    out.with_suffix(".md").write_text(header + text + "\n")


def slides_check(model_path: Path, seeds: str, size: int, out: Path | None) -> int:
    """The estimate alone on synthetic size x size slides of the default size prior (10-30 px nuclei,
    clustered: a broad size distribution), one per seed, against the median equivalent-circle
    diameter of the slide's truth."""
    import math

    import numpy as np

    rows = []
    with Segmenter(model_path) as seg:
        for seed in (int(s) for s in seeds.split(",")):
            image, truth = make_slide(size, size, seed)
            estimate = seg.estimate_diameter(image)
            rows.append(
                {
                    "seed": seed,
                    "truth": mask_diameter(truth)[0],
                    "estimate": estimate.diameter if estimate is not None else float("nan"),
                }
            )
    errors = np.array([math.log(r["estimate"] / r["truth"]) for r in rows])
    summary = {
        "slides": len(rows),
        "within_15_percent": int((np.abs(errors) < math.log(1.15)).sum()),
        "mean_log_error": float(errors.mean()),
        "mean_abs_log_error": float(np.abs(errors).mean()),
        "ratios": [round(float(math.exp(e)), 3) for e in errors],
    }
    text = (
        f"{summary['within_15_percent']} of {len(rows)} synthetic {size}^2 slides (seeds {seeds}) within "
        f"15 % of the true median diameter; mean log error {summary['mean_log_error']:+.3f}, mean |log "
        f"error| {summary['mean_abs_log_error']:.3f}; estimate / truth "
        + " ".join(f"{r:.2f}" for r in summary["ratios"])
    )
    title = "The automatic diameter on synthetic slides of the default size prior (`--slides`)"
    write(out, {"model": str(model_path), "summary": summary, "rows": rows}, text, title)
    return 0


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
    title = "The automatic diameter on the dev images (`--dev`)"
    write(out, {"model": str(model_path), "summary": summary, "rows": rows}, text, title)
    return 0


GUESSES = ("none", "own", "other", "x0.5", "x0.7", "x1.4", "x2")


def guess_check(model_path: Path, dev: Path, out: Path | None) -> int:
    """`diameter_guess` on every dev image: no guess; its own estimate ("own", as a batch of one
    acquisition gives it); another image's estimate (7 places on in the sorted list: mixed
    magnifications, as a folder of unrelated images gives it); its own estimate x 0.5, 0.7, 1.4, 2.
    Per kind: guesses confirmed in one pass (method "guess"), images within 15 % of the truth, mean
    |log error|, worst ratio, seconds per image (the estimate alone)."""
    import math
    import time

    images = sorted((dev / "images").glob("*.tif"))
    rows = []
    with Segmenter(model_path) as seg:
        own = {p.name: seg.estimate_diameter(p) for p in images}
        for k, image in enumerate(images):
            truth, _ = mask_diameter(tifffile.imread(dev / "labels" / image.name))
            mine = own[image.name]
            if mine is None:
                continue
            other = own[images[(k + 7) % len(images)].name]
            guesses = {"none": None, "own": mine.diameter, "other": other.diameter if other else None}
            guesses |= {f"x{f:g}": f * mine.diameter for f in (0.5, 0.7, 1.4, 2.0)}
            for kind, guess in guesses.items():
                start = time.perf_counter()
                found = seg.estimate_diameter(image, **({"diameter_guess": guess} if guess else {}))
                seconds = time.perf_counter() - start
                rows.append(
                    {
                        "image": image.name,
                        "kind": kind,
                        "guess": guess,
                        "truth": truth,
                        "estimate": found.diameter if found else float("nan"),
                        "confirmed": bool(found and found.method == "guess"),
                        "seconds": seconds,
                    }
                )
    lines = [
        "| guess | confirmed (one pass) | within 15 % | mean abs log error | worst | s per image |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for kind in GUESSES:
        mine = [r for r in rows if r["kind"] == kind]
        errors = [abs(math.log(r["estimate"] / r["truth"])) for r in mine if math.isfinite(r["estimate"])]
        lines.append(
            f"| {kind} | {sum(r['confirmed'] for r in mine)} / {len(mine)} "
            f"| {sum(e < math.log(1.15) for e in errors)} | {sum(errors) / len(errors):.3f} "
            f"| {math.exp(max(errors)):.2f}x | {sum(r['seconds'] for r in mine) / len(mine):.2f} |"
        )
    title = (
        "diameter_guess on the dev images (`--dev --guesses`): no guess, the image's own estimate, another"
        " image's (7 on), 0.5x, 0.7x, 1.4x, 2x its own; seconds: the estimate alone"
    )
    write(out, {"model": str(model_path), "rows": rows}, "\n".join(lines), title)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--diameters", default="10,20,40")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dev", nargs="?", const=DEV, type=Path, default=None)
    parser.add_argument("--guesses", action="store_true", help="with --dev: the diameter_guess check")
    parser.add_argument("--slides", nargs="?", const=SLIDE_SEEDS, default=None, help="synthetic slide seeds")
    parser.add_argument("--size", type=int, default=2048, help="with --slides: the slides' side (px)")
    parser.add_argument("--apparent", type=float, default=None, help="ablation: scale.APPARENT")
    args = parser.parse_args(argv)
    if args.apparent is not None:
        from cyclepose_deploy.runtime.run import scale

        scale.APPARENT = args.apparent
    if args.slides is not None:
        return slides_check(args.model, args.slides, args.size, args.out)
    if args.dev is not None and args.guesses:
        return guess_check(args.model, args.dev, args.out)
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
    title = "The automatic diameter on synthetic slides rendered at known diameters"
    write(args.out, {"model": str(args.model), "rows": rows}, "\n".join(lines), title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
