"""The real-slide cases of the runtime issue, run through `cyclepose infer`'s code path with any model:

1. sparse field: a 2048x2048 camera-noise field with one 256x256 patch of synthetic nuclei, against the
   patch alone (F1@0.5 of each; the sparse one must stay within 0.05);
2. noise-only fields (512x512 and 1024x1024, flat and with uneven illumination): objects per megapixel;
3. one +Inf pixel inside a nucleus: objects changed other than the one holding it.

    python benchmarks/real_slides.py --model EXPORT [--out benchmarks/results/real-slides-NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def run(slide: Path, model: object, out: Path) -> tuple[np.ndarray, object]:
    from cyclepose_deploy import Segmenter

    with Segmenter(model) as seg:  # type: ignore[arg-type]
        summary = seg.segment_file(slide, out)
    return tifffile.imread(out), summary


def main() -> None:
    from machine import machine_info

    from cyclepose_deploy.metrics import match_instances
    from cyclepose_deploy.synth.slide import make_slide

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real-slides")
    args = parser.parse_args()
    model = args.model
    rng = np.random.default_rng(0)
    result: dict[str, object] = {"model": model.describe()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        patch, truth = make_slide(256, 256, seed=21)
        background = float(np.percentile(patch, 5))
        field = rng.normal(background, 3.0, (2048, 2048)).clip(0).astype(np.uint16)
        field[896:1152, 896:1152] = patch
        full_truth = np.zeros(field.shape, np.int64)
        full_truth[896:1152, 896:1152] = truth
        tifffile.imwrite(root / "patch.tif", patch)
        tifffile.imwrite(root / "field.tif", field, tile=(256, 256))
        alone, s_alone = run(root / "patch.tif", model, root / "a.tif")
        sparse, s_sparse = run(root / "field.tif", model, root / "b.tif")
        result["sparse"] = {
            "nuclei": int(truth.max()),
            "patch_alone": {"objects": s_alone.objects, "f1@0.5": match_instances(alone, truth).at(0.5).f1},
            "sparse_field": {
                "objects": s_sparse.objects,
                "f1@0.5": match_instances(sparse.astype(np.int64), full_truth).at(0.5).f1,
            },
        }
        noise_rows = []
        for size in (512, 1024):
            yy, xx = np.mgrid[0:size, 0:size]
            for uneven in (False, True):
                base = (
                    200.0
                    + 600.0 * np.exp(-((yy - size / 3) ** 2 + (xx - size / 2) ** 2) / (size**2 / 4)) * uneven
                )
                tifffile.imwrite(root / "n.tif", rng.poisson(base).astype(np.uint16))
                _, s = run(root / "n.tif", model, root / "n_l.tif")
                noise_rows.append(
                    {
                        "size": size,
                        "uneven": uneven,
                        "objects": s.objects,
                        "per_mpix": s.objects / (size * size / 1e6),
                    }
                )
        result["noise_only"] = noise_rows
        image = patch.astype(np.float32)
        tifffile.imwrite(root / "clean.tif", image)
        clean, _ = run(root / "clean.tif", model, root / "c.tif")
        ys, xs = np.nonzero(clean)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        image[y, x] = np.inf
        tifffile.imwrite(root / "inf.tif", image)
        dirty, _ = run(root / "inf.tif", model, root / "d.tif")
        hit = clean[y, x]
        others = (clean != hit) & (dirty != dirty[y, x])
        changed = np.unique(clean[others & ((clean > 0) != (dirty > 0))])
        result["inf_pixel"] = {
            "objects_clean": int(clean.max()),
            "objects_with_inf": int(dirty.max()),
            "other_objects_changed": int(np.count_nonzero(changed)),
        }
    result["machine"] = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    sp = result["sparse"]
    lines = [
        f"# Real-slide cases, model {result['model']}",
        "",
        f"- sparse field: patch alone F1@0.5 {sp['patch_alone']['f1@0.5']:.3f} "
        f"({sp['patch_alone']['objects']} objects, {sp['nuclei']} nuclei); the same patch in a 2048x2048 "
        "empty field "
        f"{sp['sparse_field']['f1@0.5']:.3f} ({sp['sparse_field']['objects']} objects)",
        *(
            f"- noise only {r['size']}x{r['size']}{' uneven illumination' if r['uneven'] else ''}: "
            f"{r['objects']} objects ({r['per_mpix']:.1f} per MPix)"
            for r in noise_rows
        ),
        f"- one +Inf pixel in a nucleus: {result['inf_pixel']['objects_clean']} -> "
        f"{result['inf_pixel']['objects_with_inf']} objects, other objects changed: "
        f"{result['inf_pixel']['other_objects_changed']}",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
