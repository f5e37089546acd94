"""Many small fields: one batch call (`cyclepose infer DIR --out-dir OUT`, one process, one model load)
against one `cyclepose infer FIELD -o LABELS` process per field, on the same synthetic 256x256 fields.

    python benchmarks/batch_fields.py --model EXPORT [--fields 500] [--single 50] \
        [--out benchmarks/results/batch-fields]

Single calls are timed on the first --single fields (each is a full process start: Python, imports, the
model load) and their mean is reported per field; the batch call runs all --fields (4 fields side by
side, sharing network batches). A third mode loads the model once and segments the same fields one
after another through the Python API (the batch call before shared batches), so the gain of running
fields side by side shows on its own. All run one after the other on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    from machine import machine_info

    from cyclepose_deploy.synth.slide import make_slide

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--fields", type=int, default=500)
    parser.add_argument("--single", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batch-fields")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "cyclepose_deploy", "infer"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fields = root / "fields"
        fields.mkdir()
        for i in range(args.fields):
            tifffile.imwrite(fields / f"field{i:04d}.tif", make_slide(args.size, args.size, seed=i)[0])
        start = time.perf_counter()
        for i in range(args.single):
            field = fields / f"field{i:04d}.tif"
            subprocess.run(
                [*cli, str(field), "--model", args.model, "-o", str(root / f"s{i}.tif")],
                check=True,
                capture_output=True,
            )
        single = (time.perf_counter() - start) / args.single
        start = time.perf_counter()
        done = subprocess.run(
            [*cli, str(fields), "--model", args.model, "--out-dir", str(root / "batch")],
            capture_output=True,
            text=True,
        )
        batch_seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        from cyclepose_deploy import Segmenter

        start = time.perf_counter()
        (root / "seq").mkdir()
        with Segmenter(args.model) as seg:
            for i in range(args.fields):
                name = f"field{i:04d}"
                seg.segment_file(
                    fields / f"{name}.tif",
                    root / "seq" / f"{name}.labels.ome.tif",
                    objects=root / "seq" / f"{name}.objects.csv",
                )
        sequential_seconds = time.perf_counter() - start
    result = {
        "fields": args.fields,
        "field_size": args.size,
        "model": args.model,
        "single_calls_timed": args.single,
        "single_seconds_per_field": single,
        "single_fields_per_s": 1.0 / single,
        "batch_seconds": batch_seconds,
        "batch_fields_per_s": args.fields / batch_seconds,
        "speedup": (args.fields / batch_seconds) * single,
        "sequential_api_seconds": sequential_seconds,
        "sequential_api_fields_per_s": args.fields / sequential_seconds,
        "shared_over_sequential": sequential_seconds / batch_seconds,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# {args.fields} fields of {args.size}x{args.size}: one batch call vs one process per field",
        "",
        "| mode | fields/s | s/field |",
        "|---|--:|--:|",
        f"| one process per field (mean of {args.single}) | {1 / single:.2f} | {single:.2f} |",
        f"| one batch call (`infer DIR --out-dir`) | {args.fields / batch_seconds:.2f} | "
        f"{batch_seconds / args.fields:.3f} |",
        f"| one model load, fields one after another (API loop) | {args.fields / sequential_seconds:.2f} | "
        f"{sequential_seconds / args.fields:.3f} |",
        "",
        f"Batch is {result['speedup']:.1f}x faster per field than one process per field, and "
        f"{result['shared_over_sequential']:.2f}x the one-after-another loop (fields side by side, shared "
        f"network batches). Machine: {result['machine'].get('cpu', '?')}.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
