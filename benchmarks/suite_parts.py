"""Suite parts (2)-(4): end-to-end slides through `cyclepose infer`, flow dynamics, accuracy per precision.

Each returns plain rows for the JSON; a part whose stage is missing returns a row saying why, so the
rest of the suite still runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.synth.tiles import synthetic_tiles

BASE_SIDE = 2048  # synthesise at most this much, tile it for bigger slides (speed does not care)

# Runs a command in a child and reports that child's own peak RSS: RUSAGE_CHILDREN of this wrapper
# covers exactly one child, unlike the suite's own RUSAGE_CHILDREN, which keeps the maximum of all.
RSS_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
lines = proc.stderr.strip().splitlines()[-40:]
print(json.dumps({"rc": proc.returncode, "seconds": seconds, "max_rss_kib": rss_kib, "stderr": lines}))
"""


# (2) slides --------------------------------------------------------------------------------------
def write_slide(path: Path, side: int, channels: int) -> Path:
    """A synthetic uint16 fluorescence slide as a tiled, compressed BigTIFF, like a scanner writes."""
    import tifffile

    base = synthetic_tiles(1, 1, min(side, BASE_SIDE), seed=7)[0, 0]
    raw = np.clip(base * 2000.0 + 200.0, 0, 65535).astype(np.uint16)
    reps = -(-side // raw.shape[0])
    image = np.tile(raw, (reps, reps))[:side, :side]
    if channels == 2:
        image = np.stack([image, image[::-1]])
    tifffile.imwrite(path, image, bigtiff=True, tile=(256, 256), compression="zlib")
    return path


def infer_command(slide: Path, export: Path, out: Path) -> list[str]:
    """The `cyclepose infer` call measured end to end (the runtime engineer's CLI)."""
    cli = [sys.executable, "-m", "cyclepose_deploy", "infer"]
    return [*cli, str(slide), "--model", str(export), "-o", str(out), "--overwrite"]


def measure_infer(slide: Path, export: Path, out: Path, threads: int | None) -> dict[str, Any]:
    """Wall seconds and peak RSS of one `cyclepose infer` process, and the model it chose."""
    cmd = [sys.executable, "-c", RSS_WRAPPER, *infer_command(slide, export, out)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    measured = json.loads(done.stdout)
    models = [line.split(":", 1)[1].strip() for line in measured["stderr"] if line.startswith("model:")]
    row: dict[str, Any] = {"command": cmd[3:], "model": models[0] if models else None}
    if measured["rc"] != 0:
        row["skipped"] = (measured["stderr"] or [f"exit {measured['rc']}"])[-1]
    else:
        row.update(seconds=measured["seconds"], peak_rss_mib=measured["max_rss_kib"] / 1024)
    return row


def slide_rows(export: Path, sides: Sequence[int], work: Path, threads: int | None) -> list[dict[str, Any]]:
    """Wall time, MPix/s and peak RSS of `cyclepose infer` on slides of growing size."""
    from cyclepose_deploy.runtime.model.manifest import load_manifest

    channels = load_manifest(export).channels
    rows = []
    for side in sides:
        print(f"[suite] slide {side}x{side} ...", file=sys.stderr, flush=True)
        slide, out = work / f"slide-{side}.tif", work / f"labels-{side}.tif"
        row = {"side": side, "mpix": side * side / 1e6}
        row.update(measure_infer(write_slide(slide, side, channels), export, out, threads))
        if "seconds" in row:
            row["mpix_per_s"] = row["mpix"] / row["seconds"]
        else:
            print(f"[suite]   skipped: {row['skipped']}", file=sys.stderr)
        rows.append(row)
        for path in (slide, out):
            path.unlink(missing_ok=True)
    return rows


# (3) dynamics ------------------------------------------------------------------------------------
def dynamics_rows(sides: Sequence[int], repeats: int = 1) -> list[dict[str, Any]]:
    """flows_to_labels MPix/s (wall and per CPU second) via the dynamics engineer's bench_dynamics.run,
    on true flows of a synthetic slide, after its numba warm-up."""
    try:
        from bench_dynamics import run as run_dynamics

        rows = []
        for side in sides:
            print(f"[suite] dynamics {side}x{side} ...", file=sys.stderr, flush=True)
            report = run_dynamics(side, repeats, seed=3)
            step = report["steps"]["flows_to_labels"]
            rows.append(
                {
                    "side": side,
                    "objects_true": report["image"]["objects"],
                    "round_trip_ap_at_0.9": report["round_trip_ap_at_0.9"],
                    "chunked_equals_whole": report["chunked_equals_whole"],
                    "seconds": step["wall_s"],
                    "mpix_per_s": step["mpix_per_s"],
                    "mpix_per_cpu_s": step["mpix_per_cpu_s"],
                    "steps": report["steps"],
                }
            )
        return rows
    except ImportError as exc:
        return [{"skipped": f"dynamics benchmark unavailable: {exc}"}]


# (4) accuracy ------------------------------------------------------------------------------------
def accuracy_by_precision(export: Path) -> list[dict[str, Any]]:
    """Each artifact's mask F1 against fp32 and flow error, as export's verification recorded them."""
    from cyclepose_deploy.runtime.model.manifest import load_manifest

    rows = []
    for art in load_manifest(export).artifacts:
        v = art.verification or {}
        flows = v.get("flows") if isinstance(v.get("flows"), dict) else {}
        rows.append(
            {
                "file": art.file,
                "format": art.format,
                "precision": art.precision,
                "passed": art.passed,
                "f1_vs_fp32": _find(v, "f1"),
                "flow_max_abs": _find(flows, "max_abs"),
            }
        )
    return rows


def _find(data: Any, key: str) -> Any:
    """The first value under `key` anywhere in nested dicts (verification layouts vary by artifact)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in data.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None
