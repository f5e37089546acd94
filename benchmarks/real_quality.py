"""Quality on real fluorescence nuclei (DSB2018, ../shared/data/dsb2018-fluo/dev): any checkpoint or export,
run through `cyclepose infer`'s own code path at default settings (no per-image tuning), scored like
StarDist's `matching_dataset` (TP/FP/FN summed over images at each IoU), beside a classical Otsu +
distance-transform watershed baseline computed in the same run.

    python benchmarks/real_quality.py --model cyclepose_deploy/models/cyclepose-nuclei.pt [--model ...] \
        [--name NAME ...] [--data ../shared/data/dsb2018-fluo/dev] [--limit N] [--no-baseline] \
        [--out benchmarks/results/real-quality-NAME]          # writes NAME.json and NAME.md

`--model` takes anything `cyclepose infer --model` takes: a checkpoint or shipped model's name (exported
once into the export cache with fp32 and int8 ONNX, export/cache.py: the runtime then picks int8, the
default path), an export folder or an .onnx.
Extra `cyclepose infer` options go after `--`, e.g. `-- --diameter 30`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dsb2018-fluo" / "dev"
THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
REPORT = (0.5, 0.75, 0.9)


@dataclass
class Tally:
    """Dataset-level counts at each IoU threshold (StarDist's matching_dataset, by_image=False)."""

    tp: dict[float, int] = field(default_factory=lambda: dict.fromkeys(THRESHOLDS, 0))
    fp: dict[float, int] = field(default_factory=lambda: dict.fromkeys(THRESHOLDS, 0))
    fn: dict[float, int] = field(default_factory=lambda: dict.fromkeys(THRESHOLDS, 0))
    iou_sum: float = 0.0
    matched: int = 0
    n_pred: int = 0
    n_gt: int = 0
    seconds: float = 0.0
    images: int = 0

    def add(self, pred: np.ndarray, gt: np.ndarray, seconds: float) -> None:
        from cyclepose_deploy.metrics import match_instances

        result = match_instances(pred, gt, THRESHOLDS)
        for s in result.scores:
            t = min(THRESHOLDS, key=lambda x: abs(x - s.threshold))
            self.tp[t] += s.tp
            self.fp[t] += s.fp
            self.fn[t] += s.fn
        tp50 = result.at(0.5).tp
        if tp50:
            self.iou_sum += result.mean_iou_matched * tp50
            self.matched += tp50
        self.n_pred += result.n_pred
        self.n_gt += result.n_gt
        self.seconds += seconds
        self.images += 1

    def f1(self, t: float) -> float:
        den = 2 * self.tp[t] + self.fp[t] + self.fn[t]
        return 2 * self.tp[t] / den if den else 1.0

    def ap(self, t: float) -> float:
        den = self.tp[t] + self.fp[t] + self.fn[t]
        return self.tp[t] / den if den else 1.0

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "images": self.images,
            "objects_predicted": self.n_pred,
            "objects_true": self.n_gt,
            "mean_matched_iou": self.iou_sum / self.matched if self.matched else float("nan"),
            "mean_ap_50_95": float(np.mean([self.ap(t) for t in THRESHOLDS])),
            "seconds_per_image": self.seconds / max(self.images, 1),
        }
        for t in THRESHOLDS:
            out[f"f1@{t:g}"] = self.f1(t)
            out[f"ap@{t:g}"] = self.ap(t)
            out[f"precision@{t:g}"] = self.tp[t] / max(self.tp[t] + self.fp[t], 1)
            out[f"recall@{t:g}"] = self.tp[t] / max(self.tp[t] + self.fn[t], 1)
        return out


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """The classical baseline: Gaussian blur (sigma 1), Otsu threshold, holes filled, objects under
    15 px dropped, then a watershed on the distance transform seeded by its local maxima."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    if smooth.max() <= smooth.min():
        return np.zeros(image.shape, np.int32)
    fg = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    lab, n = ndimage.label(fg)
    sizes = np.bincount(lab.ravel())
    fg &= (sizes >= 15)[lab]
    dist = ndimage.distance_transform_edt(fg)
    dist = ndimage.gaussian_filter(dist, 1.0)
    peaks = peak_local_max(dist, min_distance=5, labels=ndimage.label(fg)[0], exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def infer_options(extra: list[str]) -> dict[str, object]:
    """`cyclepose infer` options given after `--`, as Segmenter options: --name VALUE (a number or a
    word), a bare --switch (True) or --no-switch (False), e.g. `-- --diameter 30 --tta --no-whole-image`."""
    out: dict[str, object] = {}
    k = 0
    while k < len(extra):
        name = extra[k].removeprefix("--").replace("-", "_")
        if k + 1 < len(extra) and not extra[k + 1].startswith("--"):
            value: object = extra[k + 1]
            try:
                value = float(value)  # type: ignore[arg-type]
                value = int(value) if float(value).is_integer() and "." not in extra[k + 1] else value
            except ValueError:
                pass
            out[name], k = value, k + 2
        elif name.startswith("no_"):
            out[name.removeprefix("no_")], k = False, k + 1
        else:
            out[name], k = True, k + 1
    return out


def score_model(
    model_path: Path, pairs: list[tuple[Path, Path]], extra: dict[str, object]
) -> tuple[Tally, list]:
    from cyclepose_deploy import Segmenter
    from cyclepose_deploy.metrics import match_instances

    tally, rows = Tally(), []
    with tempfile.TemporaryDirectory() as tmp, Segmenter(model_path, **extra) as seg:
        for image_path, label_path in pairs:
            out = Path(tmp) / f"{image_path.stem}.labels.tif"
            t = time.perf_counter()
            summary = seg.segment_file(image_path, out)
            seconds = time.perf_counter() - t
            pred = tifffile.imread(out).astype(np.int64)
            gt = tifffile.imread(label_path).astype(np.int64)
            tally.add(pred, gt, seconds)
            match = match_instances(pred, gt)
            rows.append(
                {
                    "image": image_path.name,
                    "objects": summary.objects,
                    "true": int(len(np.unique(gt)) - 1),
                    "f1@0.5": match.at(0.5).f1,
                    "f1@0.75": match.at(0.75).f1,
                    "diameter": summary.diameter.diameter if summary.diameter else None,
                    "seconds": seconds,
                }
            )
            out.unlink()
    return tally, rows


def score_baseline(pairs: list[tuple[Path, Path]]) -> Tally:
    tally = Tally()
    for image_path, label_path in pairs:
        t = time.perf_counter()
        pred = otsu_watershed(tifffile.imread(image_path))
        tally.add(pred, tifffile.imread(label_path).astype(np.int64), time.perf_counter() - t)
    return tally


def table(results: dict[str, dict]) -> str:
    head = "| method | F1@0.5 | F1@0.75 | F1@0.9 | AP 0.5:0.95 | mean matched IoU | found / true | s/image |"
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['f1@0.5']:.3f} | {r['f1@0.75']:.3f} | {r['f1@0.9']:.3f} "
            f"| {r['mean_ap_50_95']:.3f} "
            f"| {r['mean_matched_iou']:.3f} | {r['objects_predicted']} / {r['objects_true']} "
            f"| {r['seconds_per_image']:.2f} |"
        )
    return "\n".join(lines)


def dataset_pairs(data: Path, limit: int | None) -> list[tuple[Path, Path]]:
    images = sorted((data / "images").glob("*.tif"))
    pairs = [(p, data / "labels" / p.name) for p in images if (data / "labels" / p.name).is_file()]
    if not pairs:
        raise SystemExit(f"no image/label pairs under {data}: point --data at dsb2018-fluo/dev")
    return pairs[:limit] if limit else pairs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="repeat to score several")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--name", action="append", default=None, help="row name per --model (default: the model's file name)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    names = args.name or [m.name for m in args.model]
    if len(names) != len(args.model):
        parser.error("give one --name per --model, or none")
    pairs = dataset_pairs(args.data, args.limit)
    results: dict[str, dict] = {}
    per_image: list[dict] = []
    for name, model in zip(names, args.model, strict=True):
        tally, rows = score_model(model, pairs, infer_options(extra))
        results[f"cyclepose ({name})"] = tally.to_dict()
        per_image += [{"model": name, **row} for row in rows]
    if not args.no_baseline:
        results["Otsu + watershed"] = score_baseline(pairs).to_dict()
    text = table(results)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "data": str(args.data),
            "images": len(pairs),
            "infer_options": extra,
            "results": results,
            "per_image": per_image,
        }
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
