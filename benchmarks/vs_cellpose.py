"""The same trained S in Cellpose 3.1 and in `cyclepose infer`: whole-process wall time and peak RSS on
the same images at the same diameter, plus F1@0.5 of each against the synthetic truth (issue #23).

    python benchmarks/vs_cellpose.py [--checkpoint cyclepose_deploy/models/cyclepose-synth.pt] \\
        [--export EXPORT_DIR] [--cellpose-python /work/cellpose-venv/bin/python] [--repeats 3] \\
        [--cases slide,plate] [--size 2048] [--slide-seed 3] [--fields 24] \\
        [--field-height 520 --field-width 696] [--threads N] [--work DIR] \\
        [--out benchmarks/results/vs-cellpose]       # writes .json and .md

Cellpose runs from its own virtual environment (`cellpose<4`, never a project dependency):
    python3 -m venv /work/cellpose-venv && /work/cellpose-venv/bin/pip install torch==2.13.0 'cellpose<4'

Cases: "slide", one --size^2 synthetic slide (`cyclepose synth`'s writer, --slide-seed, 3); "plate", --fields
synthetic fields of --field-height x --field-width (seeds 100, 101, ...) in one folder, segmented in
one process with one model load by both tools (`cyclepose infer FOLDER --out-dir`, batch mode; a
Cellpose process that loads the model once and calls `model.eval` per field).

Runners, each a separate whole process (Python start, imports, model load, reading, segmenting,
writing labels), timed from outside; peak RSS is the child's own (`getrusage(RUSAGE_CHILDREN)` in a
one-child wrapper, as in the suite):
  cellpose      Cellpose 3.1 `CellposeModel.eval` with S loaded into its CPnet, diameter given (the true
                median equivalent-circle diameter of the synthetic truth, pooled over a plate's fields),
                its defaults otherwise (224 px tiles, overlap 0.1, batch 8, resample, flow_threshold 0.4,
                cellprob_threshold 0.0, min_size 15, percentile 1-99 normalisation), torch threads = --threads
  ours-auto     `cyclepose infer` at default settings: automatic diameter, ONNX Runtime's default threads
  ours-given    `cyclepose infer --diameter D`, the same diameter as Cellpose
  ours-fields   plates only: `cyclepose infer --diameter-fields 4`, one automatic estimate for the
                acquisition from its first 4 fields (still no diameter given)
interleaved: for each case, for each repeat: cellpose, ours-auto, ours-given (, ours-fields). Reported
per case and runner: medians over the repeats, the ratio Cellpose / ours, and pooled F1@0.5 against the truth.

S goes into Cellpose like this. `CellposeModel` hard-codes the widths [32, 64, 128, 256] when it builds
its CPnet, and `pretrained_model=PATH` loads into that net, so a narrower S (the shipped models are
[16, 32, 64, 128]) fails there with a size mismatch. benchmarks/cellpose_child.py builds
`CellposeModel(gpu=False, pretrained_model=False, nchan=2)` and replaces `model.net` with a
`resnet_torch.CPnet([2, *widths], 3, sz=3, mkldnn=model.mkldnn, max_pool=True, diam_mean=...)`
holding the checkpoint's "S" (strict load: the keys are Cellpose's), and sets `model.diam_mean` /
`diam_labels` to the checkpoint config's `diam_mean`.
Two more Cellpose 3.1 limits are worked around without changing what S computes:
- it cannot run a one-channel CPnet at a diameter other than its own (`resize_image` drops the channel
  axis of an (H, W, 1) image, then `run_net`'s transpose fails), so a one-channel S is widened to
  Cellpose's two-channel input (`channels=[0, 0]`: image + zero channel), the extra input channel with
  zero BatchNorm weight and bias and zero conv weights: it adds exactly nothing;
- `run_net` keeps styles in 256 columns, so the CPnet subclass zero-pads S's style vector (its deepest
  width, 128) to 256; segmentation never reads it (no size model runs).
Before the runs, an untimed check compares the widened net with S strictly loaded in a CPnet of its
own channels through Cellpose's `core.run_net` (stored as `s_in_cellpose`; refused above 1e-4).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

RUNNERS = ("cellpose", "ours-auto", "ours-given", "ours-fields")
ACQUISITION_FIELDS = 4  # ours-fields: one automatic estimate from the plate's first 4 fields
SLIDE_SEED, FIELD_SEED = 3, 100
SCHEMA = "cyclepose-vs-cellpose/1"
TARGET_SPEEDUP = 4.0  # issue #23: ours at default settings >= 4x faster than Cellpose given the diameter


def main() -> None:
    args = parse_args()
    from machine import machine_info

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vs-cellpose-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        cellpose_env = check_cellpose(args.cellpose_python)
        export = ensure_export(args.checkpoint, args.export, root)
        script = Path(__file__).with_name("cellpose_child.py")
        parity = check_s_in_cellpose(args, script)
        machine = machine_info()
        cases = {name: run_case(name, args, root, export, script) for name in args.cases}
        result = {
            "schema": SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings(args, export, cellpose_env),
            "s_in_cellpose": parity,
            "cases": cases,
            "machine": machine,
            "load_average_end": list(os.getloadavg()),
        }
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    args.out.with_suffix(".md").write_text(report)
    print(report)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO / "cyclepose_deploy/models/cyclepose-synth.pt"
    )
    parser.add_argument("--export", type=Path, help="export folder of --checkpoint (default: exported once)")
    parser.add_argument("--cellpose-python", type=Path, default=Path("/work/cellpose-venv/bin/python"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=lambda s: [c for c in s.split(",") if c], default=["slide", "plate"])
    parser.add_argument("--size", type=int, default=2048, help="slide side (px)")
    parser.add_argument("--slide-seed", type=int, default=SLIDE_SEED, help="the slide's synthetic seed")
    parser.add_argument("--fields", type=int, default=24, help="fields in the plate")
    parser.add_argument("--field-height", type=int, default=520)
    parser.add_argument("--field-width", type=int, default=696)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=cores, help="torch threads for Cellpose")
    parser.add_argument("--work", help="scratch folder, kept (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vs-cellpose")
    args = parser.parse_args()
    unknown = set(args.cases) - {"slide", "plate"}
    if unknown or not args.cases:
        parser.error(f"--cases takes slide and/or plate, not {sorted(unknown) or 'nothing'}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def check_cellpose(python: Path) -> dict[str, str]:
    """The Cellpose venv's cellpose and torch versions; refuses anything but Cellpose 3."""
    code = (
        "import json, torch; from cellpose.version import version; "
        "print(json.dumps([version, torch.__version__]))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{python} cannot import cellpose: {done.stderr.strip()[-300:]}\n{__doc__}")
    cellpose_version, torch_version = json.loads(done.stdout.strip().splitlines()[-1])
    if not cellpose_version.startswith("3."):
        raise SystemExit(f"{python} has cellpose {cellpose_version}; this benchmark needs 3.x (`cellpose<4`)")
    return {"python": str(python), "cellpose": cellpose_version, "torch": torch_version}


def ensure_export(checkpoint: Path, export: Path | None, root: Path) -> Path:
    """The given export folder (checked to come from --checkpoint), or one made once by `cyclepose export`
    in the scratch folder."""
    from cyclepose_deploy.runtime.model.manifest import load_manifest, sha256_file

    if export is None:
        export = root / "export"
        if not (export / "manifest.json").exists():
            print(f"[vs-cellpose] exporting {checkpoint} ...", file=sys.stderr, flush=True)
            cmd = [*cyclepose("export"), str(checkpoint), "-o", str(export), "--no-engine"]
            subprocess.run(cmd, check=True, capture_output=True)
    if load_manifest(export).source_sha256 != sha256_file(checkpoint):
        raise SystemExit(
            f"{export} was not exported from {checkpoint}: pass its export, or leave --export out"
        )
    return export


def check_s_in_cellpose(args: argparse.Namespace, script: Path) -> dict[str, Any]:
    """Untimed: the CPnet the Cellpose runs use against S strictly loaded in a CPnet of its own input
    channels, on random tiles through Cellpose's `core._forward`; refuses a difference above 1e-4."""
    spec = {"check": True, "checkpoint": str(args.checkpoint.resolve()), "threads": args.threads}
    done = subprocess.run(
        [str(args.cellpose_python), str(script), json.dumps(spec)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"S does not load into Cellpose's CPnet:\n{done.stderr.strip()[-2000:]}")
    parity: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not parity["max_abs_diff_vs_exact"] <= 1e-4:
        raise SystemExit(f"the widened CPnet differs from S by {parity['max_abs_diff_vs_exact']:.3g}")
    print(
        f"[vs-cellpose] S in Cellpose's CPnet {parity['nbase']}: max |diff| "
        f"{parity['max_abs_diff_vs_exact']:.2g}",
        file=sys.stderr,
        flush=True,
    )
    return parity


def cyclepose(command: str) -> list[str]:
    return [sys.executable, "-m", "cyclepose_deploy", command]


# inputs ------------------------------------------------------------------------------------------
def make_inputs(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Write the case's images and truth (the writer behind `cyclepose synth`); the true diameter."""
    from cyclepose_deploy.runtime.run.diameter import mask_diameter
    from cyclepose_deploy.synth.slide import write_slide

    images, truth = root / name / "images", root / name / "truth"
    images.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    if name == "slide":
        specs = [("slide", args.size, args.size, args.slide_seed)]
    else:
        specs = [
            (f"field{i:03d}", args.field_height, args.field_width, FIELD_SEED + i) for i in range(args.fields)
        ]
    for stem, height, width, seed in specs:
        write_slide(images / f"{stem}.tif", truth / f"{stem}.tif", height, width, seed)
    truths = {stem: read_labels(truth / f"{stem}.tif") for stem, *_ in specs}
    diameter, objects = mask_diameter(pooled(list(truths.values())))
    shape = f"{specs[0][1]}x{specs[0][2]}"
    return {
        "images": [images / f"{stem}.tif" for stem, *_ in specs],
        "folder": images,
        "truths": truths,
        "info": {"images": len(specs), "shape": shape, "seeds": [s[3] for s in specs]},
        "diameter": diameter,
        "objects": objects,
    }


def pooled(labels: list[np.ndarray]) -> np.ndarray:
    """Several label images as one (stacked, ids kept distinct), for a diameter over all of them."""
    flat, offset = [], 0
    for lab in labels:
        flat.append(np.where(lab > 0, lab.astype(np.int64) + offset, 0).ravel())
        offset += int(lab.max(initial=0))
    return np.concatenate(flat)


def read_labels(path: Path) -> np.ndarray:
    from cyclepose_deploy.cli.eval_cmd import read_labels as read

    return read(path, str(path.name))


# runs --------------------------------------------------------------------------------------------
def run_case(name: str, args: argparse.Namespace, root: Path, export: Path, script: Path) -> dict[str, Any]:
    print(f"[vs-cellpose] {name}: writing inputs ...", file=sys.stderr, flush=True)
    inputs = make_inputs(name, args, root)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for runner in runners(name):
            out = root / name / "out" / f"{runner}-{repeat}"
            out.mkdir(parents=True)
            cmd = command(runner, name, inputs, out, export, script, args)
            print(
                f"[vs-cellpose] {name} repeat {repeat + 1}/{args.repeats}: {runner} ...",
                file=sys.stderr,
                flush=True,
            )
            shown = " ".join(cmd).replace(str(root), "$WORK")
            row = {"runner": runner, "repeat": repeat, "command": shown, **measure(cmd)}
            if "seconds" in row:
                row.update(score(runner, name, inputs["truths"], out))
                row.update(details(runner, out, row.pop("stderr")))
            runs.append(row)
            print(f"[vs-cellpose]   {brief(row)}", file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return {
        "input": inputs["info"],
        "true_diameter_px": inputs["diameter"],
        "true_objects": inputs["objects"],
        "runs": runs,
        "summary": summary(runs, runners(name)),
    }


def runners(case: str) -> tuple[str, ...]:
    """The runners of a case: ours-fields only where there are fields (batch mode)."""
    return RUNNERS if case == "plate" else tuple(r for r in RUNNERS if r != "ours-fields")


def command(
    runner: str,
    case: str,
    inputs: dict[str, Any],
    out: Path,
    export: Path,
    script: Path,
    args: argparse.Namespace,
) -> list[str]:
    diameter = round(float(inputs["diameter"]), 2)
    if runner == "cellpose":
        spec = {
            "checkpoint": str(args.checkpoint.resolve()),
            "images": [str(p) for p in inputs["images"]],
            "diameter": diameter,
            "threads": args.threads,
            "out_dir": str(out),
            "info": str(out / "cellpose-info.json"),
        }
        return [str(args.cellpose_python), str(script), json.dumps(spec)]
    target = ["--out-dir", str(out)] if case == "plate" else ["-o", str(out / "slide.labels.ome.tif")]
    source = inputs["folder"] if case == "plate" else inputs["images"][0]
    given = {
        "ours-given": ["--diameter", f"{diameter}"],
        "ours-fields": ["--diameter-fields", str(ACQUISITION_FIELDS)],
    }.get(runner, [])
    return [*cyclepose("infer"), str(source), "--model", str(export), *target, *given]


def measure(cmd: list[str]) -> dict[str, Any]:
    """Wall seconds and the child's own peak RSS, through the suite's one-child wrapper."""
    from suite_parts import RSS_WRAPPER

    load = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, check=True
    )
    measured = json.loads(done.stdout)
    row: dict[str, Any] = {"load_average_1m": load}
    if measured["rc"] != 0:
        row["failed"] = (measured["stderr"] or [f"exit {measured['rc']}"])[-5:]
        return row
    row.update(
        seconds=measured["seconds"], peak_rss_mib=measured["max_rss_kib"] / 1024, stderr=measured["stderr"]
    )
    return row


def score(runner: str, case: str, truths: dict[str, np.ndarray], out: Path) -> dict[str, Any]:
    """Pooled (dataset-level) counts and F1 at IoU 0.5 over the case's images."""
    from cyclepose_deploy.metrics import match_instances

    tp = fp = fn = 0
    for stem, truth in truths.items():
        if runner == "cellpose":
            path = out / f"{stem}.labels.tif"
        else:
            path = out / (f"{stem}.labels.ome.tif" if case == "plate" else "slide.labels.ome.tif")
        s = match_instances(read_labels(path), truth, thresholds=(0.5,)).at(0.5)
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
    return {"objects": tp + fp, "tp": tp, "fp": fp, "fn": fn, "f1_05": 2 * tp / max(2 * tp + fp + fn, 1)}


def details(runner: str, out: Path, stderr: list[str]) -> dict[str, Any]:
    """What ran: Cellpose's own info file, or our model and diameter lines (and batch summary)."""
    if runner == "cellpose":
        return {"cellpose_info": json.loads((out / "cellpose-info.json").read_text())}
    found: dict[str, Any] = {
        "model": next((line.split(":", 1)[1].strip() for line in stderr if line.startswith("model:")), None),
        "diameter_lines": [line for line in stderr if line.startswith("diameter")],
    }
    table = out / "summary.csv"
    if table.exists():
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        found["diameters_px"] = [float(r["diameter_px"]) for r in rows if r.get("diameter_px")]
        found["statuses"] = sorted({r["status"] for r in rows})
    return found


def brief(row: dict[str, Any]) -> str:
    if "failed" in row:
        return "FAILED: " + " | ".join(row["failed"])
    return f"{row['seconds']:.1f} s, {row['peak_rss_mib']:.0f} MiB, F1@0.5 {row['f1_05']:.3f}"


# summary -----------------------------------------------------------------------------------------
def summary(runs: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for runner in names:
        done = [r for r in runs if r["runner"] == runner and "seconds" in r]
        if not done:
            table[runner] = {"failed": True}
            continue
        table[runner] = {
            "runs": len(done),
            "median_seconds": statistics.median(r["seconds"] for r in done),
            "seconds": [r["seconds"] for r in done],
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in done),
            "f1_05": statistics.median(r["f1_05"] for r in done),
            "objects": done[-1]["objects"],
            **inside(runner, done),
        }
    base = table["cellpose"]
    for runner in names[1:]:
        row = table[runner]
        if "median_seconds" in row and "median_seconds" in base:
            row["cellpose_over_ours_time"] = base["median_seconds"] / row["median_seconds"]
            row["cellpose_over_ours_rss"] = base["median_peak_rss_mib"] / row["median_peak_rss_mib"]
    return table


def inside(runner: str, done: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of what each process reports about itself: Cellpose's import, model load and eval
    seconds; our artifact and diameter (the estimate, or the given value)."""
    if runner == "cellpose":
        infos = [r["cellpose_info"] for r in done]
        return {
            "import_s": statistics.median(i["import_s"] for i in infos),
            "model_load_s": statistics.median(i["model_load_s"] for i in infos),
            "eval_s": statistics.median(sum(im["eval_s"] for im in i["images"]) for i in infos),
        }
    diameters = []
    for r in done:
        found = r.get("diameters_px") or [float(line.split()[1]) for line in r.get("diameter_lines", [])]
        diameters.append(statistics.median(found) if found else float("nan"))
    return {"model": done[0].get("model"), "diameter_px": statistics.median(diameters)}


def settings(args: argparse.Namespace, export: Path, cellpose_env: dict[str, str]) -> dict[str, Any]:
    return {
        "checkpoint": str(args.checkpoint),
        "export": str(export) if args.export else f"exported once from the checkpoint ({export.name}/)",
        "repeats": args.repeats,
        "order": "per case, per repeat: " + ", ".join(RUNNERS),
        "cellpose_env": cellpose_env,
        "cellpose_threads": f"torch.set_num_threads({args.threads})",
        "ours_threads": "ONNX Runtime default (all usable cores)",
        "cellpose_eval": "CellposeModel.eval(diameter=D, flow_threshold=0.4, cellprob_threshold=0.0), "
        "defaults otherwise (bsize 224, tile_overlap 0.1, batch_size 8, resample, min_size 15)",
        "diameter": "true median equivalent-circle diameter of the synthetic truth (pooled over fields)",
        "timing": "whole process from outside (wall); "
        "peak RSS = getrusage(RUSAGE_CHILDREN) of a one-child wrapper",
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# The same trained S: Cellpose 3.1 vs `cyclepose infer` (whole process)",
        "",
        f"Cellpose {s['cellpose_env']['cellpose']} (torch {s['cellpose_env']['torch']}, "
        f"{s['cellpose_threads']}); ours: {s['ours_threads']}. Checkpoint `{Path(s['checkpoint']).name}`. "
        f"Median of {s['repeats']} interleaved runs; F1 at IoU 0.5 against the synthetic truth.",
        "",
        "| case | runner | wall s | peak RSS MiB | Cellpose / ours (time) | (RSS) | F1@0.5 | objects |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    verdicts: list[str] = []
    notes: list[str] = []
    for name, case in result["cases"].items():
        shape, diameter = case["input"]["shape"], case["true_diameter_px"]
        label = f"{name} ({case['input']['images']} x {shape}, D {diameter:.1f} px)"
        for runner, row in case["summary"].items():
            if row.get("failed"):
                lines.append(f"| {label} | {runner} | failed | | | | | |")
                continue
            ratio = row.get("cellpose_over_ours_time")
            rss = row.get("cellpose_over_ours_rss")
            lines.append(
                f"| {label} | {runner} | {row['median_seconds']:.1f} | {row['median_peak_rss_mib']:.0f} | "
                f"{f'{ratio:.2f}x' if ratio else ''} | {f'{rss:.2f}x' if rss else ''} | "
                f"{row['f1_05']:.3f} | {row['objects']} |"
            )
        notes.append(case_note(name, case))
        auto = case["summary"].get("ours-auto", {}).get("cellpose_over_ours_time")
        if auto is not None:
            verdict = "meets" if auto >= TARGET_SPEEDUP else "misses"
            verdicts.append(f"{name} {auto:.2f}x ({verdict} it)")
    m, parity = result["machine"], result["s_in_cellpose"]
    load = [round(x, 2) for x in m.get("load_average") or []]
    lines += [
        "",
        f"Issue #23's target: `cyclepose infer` at default settings (automatic diameter) at least "
        f"{TARGET_SPEEDUP:g}x faster than Cellpose given the diameter: "
        f"{'; '.join(verdicts) or 'not measured'}.",
        "",
        *notes,
        "",
        f"S in Cellpose: CPnet {parity['nbase']} (strict load; a one-channel S widened to Cellpose's "
        f"two-channel input with zero weights), max |difference| {parity['max_abs_diff_vs_exact']:.1g} "
        f"against S in a CPnet of its own channels through Cellpose's `run_net`.",
        f"Machine: {m.get('cpu', '?')}, {m.get('usable_cores')} usable cores, load average {load} at start, "
        f"{[round(x, 2) for x in result['load_average_end']]} at end.",
    ]
    return "\n".join(lines) + "\n"


def case_note(name: str, case: dict[str, Any]) -> str:
    """One line per case: inside each process (Cellpose's own times, our artifact and diameter)."""
    table = case["summary"]
    parts = [f"- {name}: {case['true_objects']} true nuclei"]
    cp = table.get("cellpose", {})
    if "eval_s" in cp:
        parts.append(
            f"Cellpose inside its process: import {cp['import_s']:.1f} s, "
            f"model load {cp['model_load_s']:.1f} s, eval {cp['eval_s']:.1f} s"
        )
    for runner in RUNNERS[1:]:
        row = table.get(runner, {})
        if "model" in row:
            parts.append(f"{runner}: {row['model']}, diameter {row['diameter_px']:.1f} px")
    return "; ".join(parts) + "."


if __name__ == "__main__":
    main()
