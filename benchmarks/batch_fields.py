"""Many small fields: one batch call (`cyclepose infer DIR --out-dir OUT`, one process, one model load)
against one `cyclepose infer FIELD -o LABELS` process per field, on the same synthetic 256x256 fields.

    python benchmarks/batch_fields.py --model EXPORT [--fields 500] [--single 50] \
        [--out benchmarks/results/batch-fields]

Single calls are timed on the first --single fields (each is a full process start: Python, imports, the
model load) and their mean is reported per field; the batch call runs all --fields. Both run one after
the other on a quiet machine; the ratio is images per second, batch over single.
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
        "",
        f"Batch is {result['speedup']:.1f}x faster per field. Machine: {result['machine'].get('cpu', '?')}.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
