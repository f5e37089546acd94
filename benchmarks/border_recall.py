"""Recall at IoU 0.5 of the true nuclei that touch the image border and of those inside, on the
labelled DSB2018 dev images, at default settings (issue #22's error class "nuclei cut by the border").

    python benchmarks/border_recall.py NAME=MODEL [NAME=MODEL ...] \\
        [--out benchmarks/results/border-recall.json]

MODEL: anything `Segmenter` takes (an export folder, an .onnx, a checkpoint or a shipped model's name).
A true nucleus counts as found when some predicted nucleus overlaps it with IoU > 0.5 (above 0.5 a
match is unique, so no assignment is needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from cyclepose_deploy import Segmenter

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-fluo" / "dev"


def best_iou_per_truth(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The best IoU of each true label (index = label) with any predicted label."""
    k = int(pred.max()) + 1
    both = (gt > 0) & (pred > 0)
    pairs, inter = np.unique(gt[both] * k + pred[both], return_counts=True)
    g, p = pairs // k, pairs % k
    area_g, area_p = np.bincount(gt.ravel()), np.bincount(pred.ravel(), minlength=k)
    best = np.zeros(area_g.size)
    np.maximum.at(best, g, inter / (area_g[g] + area_p[p] - inter))
    return best


def score(model: str, dev: Path) -> dict[str, dict[str, float]]:
    tally = {"border": [0, 0], "inside": [0, 0]}
    with Segmenter(model) as seg:
        for path in sorted((dev / "images").glob("*.tif")):
            gt = tifffile.imread(dev / "labels" / path.name).astype(np.int64)
            pred = seg.segment(tifffile.imread(path)).labels.astype(np.int64)
            best = best_iou_per_truth(gt, pred)
            edge = set(np.unique(np.concatenate([gt[0], gt[-1], gt[:, 0], gt[:, -1]])).tolist())
            for label in np.unique(gt[gt > 0]).tolist():
                side = tally["border" if label in edge else "inside"]
                side[0] += int(best[label] > 0.5)
                side[1] += 1
    return {k: {"recall": found / true, "found": found, "true": true} for k, (found, true) in tally.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="NAME=MODEL")
    parser.add_argument("--dev", type=Path, default=DEV)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for item in args.models:
        name, model = item.split("=", 1)
        results[name] = {"model": model, **score(model, args.dev)}
        for side in ("border", "inside"):
            r = results[name][side]
            print(f"{name} {side}: recall@0.5 {r['recall']:.3f} ({r['found']} / {r['true']})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
