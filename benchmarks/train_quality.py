"""Quality of a trained CyclePose model against synthetic ground truth (issue 3).

Segments held-out synthetic slides with S alone (a plain tiled torch forward; the runtime is not
needed) and scores F1 at IoU 0.5. Usage:

    python benchmarks/train_quality.py --checkpoint model.pt --sizes 2048,4096 --seeds 3,2026 \
        [--flow-threshold 0.4] [--cellprob-threshold 0.0] [--out benchmarks/results/x.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cyclepose_deploy.defaults import FLOW_SCALE
from cyclepose_deploy.runtime.source.normalize import Normalization


def taper(tile: int) -> np.ndarray:
    ramp = np.minimum(np.arange(tile) + 1, np.arange(tile)[::-1] + 1).astype(np.float32)
    ramp = np.minimum(ramp / (tile / 4), 1.0)
    return np.outer(ramp, ramp)


def predict(net: torch.nn.Module, image: np.ndarray, tile: int = 256, overlap: int = 64) -> np.ndarray:
    """(C, H, W) normalised image -> (3, H, W) S output, tiles blended with a taper weight."""
    c, h, w = image.shape
    ph, pw = max(tile, -(-h // 16) * 16), max(tile, -(-w // 16) * 16)
    padded = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect")
    out = np.zeros((3, ph, pw), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    step, wt = tile - overlap, taper(tile)
    ys = sorted({*range(0, ph - tile, step), ph - tile})
    xs = sorted({*range(0, pw - tile, step), pw - tile})
    with torch.no_grad():
        for y in ys:
            batch = np.stack([padded[:, y : y + tile, x : x + tile] for x in xs])
            result = net(torch.from_numpy(batch)).numpy()
            for x, res in zip(xs, result, strict=True):
                out[:, y : y + tile, x : x + tile] += res * wt
                weight[y : y + tile, x : x + tile] += wt
    return (out / weight)[:, :h, :w]


def segment(
    net: torch.nn.Module, raw: np.ndarray, flow_threshold: float, cellprob_threshold: float
) -> np.ndarray:
    from cyclepose_deploy.runtime.dynamics import flows_to_labels

    image = Normalization.from_sample(raw).apply(raw)[None]
    out = predict(net, image)
    return flows_to_labels(
        out[:2] / FLOW_SCALE, out[2], flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold
    )


def score(
    net: torch.nn.Module, size: int, seed: int, flow_threshold: float, cellprob_threshold: float
) -> dict:
    from cyclepose_deploy.metrics import match_instances
    from cyclepose_deploy.synth.slide import make_slide

    raw, gt = make_slide(size, size, seed)
    start = time.perf_counter()
    labels = segment(net, raw.astype(np.float32), flow_threshold, cellprob_threshold)
    result = match_instances(labels, gt)
    return {
        "size": size,
        "seed": seed,
        "f1@0.5": round(result.f1(0.5), 4),
        "f1@0.75": round(result.f1(0.75), 4),
        "n_pred": result.n_pred,
        "n_gt": int(len(np.unique(gt)) - 1),
        "flow_threshold": flow_threshold,
        "cellprob_threshold": cellprob_threshold,
        "segment_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sizes", default="2048,4096")
    parser.add_argument("--seeds", default="3,2026")
    parser.add_argument("--flow-threshold", type=float, default=0.4)
    parser.add_argument("--cellprob-threshold", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cyclepose_deploy.train.checkpoint import load_segmenter

    net, _ = load_segmenter(args.checkpoint)
    sizes = [int(v) for v in args.sizes.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    rows = [
        score(net, s, d, args.flow_threshold, args.cellprob_threshold)
        for s, d in zip(sizes, seeds, strict=True)
    ]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        from cyclepose_deploy.atomic import write_json_atomic

        write_json_atomic(args.out, {"checkpoint": args.checkpoint, "results": rows})


if __name__ == "__main__":
    main()
