"""Before / after for the CPU side: pools the timed runs of several `cpu_side.py` results per commit.

Run cpu_side.py alternately from two checkouts (the older one with PYTHONPATH set to its tree), each
round writing its own result, so slow spells of a shared machine hit both sides alike; then:

    python benchmarks/cpu_side_ab.py --base b1.json b2.json --new n1.json n2.json \
        [--labels BASE,NEW] [--out benchmarks/results/cpu-side-ab]

Per slide size and core count: the median over all pooled runs of the whole-run wall time (and the
MPix/s it gives), of MPix per CPU-second, and of each stage's seconds, and each result's own MPix/s
(the spread from round to round). Writes NAME.json (also the pooled runs, each with its file, and every
result's machine info) and NAME.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_side import STAGES  # noqa: E402


def pooled(paths: list[Path]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """Timed runs of every result, keyed by (size, cores); each run notes its file."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["results"]:
            found = [{**run, "file": path.name} for run in row["runs"]]
            runs.setdefault((row["size"], row["cores"]), []).extend(found)
    return runs


def per_file(runs: list[dict[str, Any]], size: int) -> dict[str, float]:
    """MPix/s of each file's median wall time (the spread from round to round)."""
    walls: dict[str, list[float]] = {}
    for run in runs:
        walls.setdefault(run["file"], []).append(run["wall"])
    return {name: size**2 / 1e6 / statistics.median(w) for name, w in walls.items()}


def summary(runs: list[dict[str, Any]], size: int) -> dict[str, float]:
    mpix = size**2 / 1e6
    wall = statistics.median(r["wall"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    out = {"runs": len(runs), "wall": wall, "mpix_s": mpix / wall, "mpix_cpu_s": mpix / cpu}
    for stage in STAGES:
        out[stage] = statistics.median(r["stages"].get(stage, 0.0) for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", nargs="+", type=Path, required=True)
    parser.add_argument("--new", nargs="+", type=Path, required=True)
    parser.add_argument("--labels", default="before,after")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-side-ab")
    args = parser.parse_args()
    labels = args.labels.split(",")
    sides = {labels[0]: pooled(args.base), labels[1]: pooled(args.new)}
    machine = json.loads(args.base[0].read_text()).get("machine", {})
    rows = []
    for key in sorted(set(sides[labels[0]]) & set(sides[labels[1]])):
        for label in labels:
            runs = sides[label][key]
            row = {"size": key[0], "cores": key[1], "side": label, **summary(runs, key[0])}
            rows.append({**row, "mpix_s_per_file": per_file(runs, key[0]), "pooled_runs": runs})
    machines = {p.name: json.loads(p.read_text()).get("machine", {}) for p in [*args.base, *args.new]}
    report = {"machine": machine, "labels": labels, "rows": rows, "machines": machines}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(_markdown(report, args))


def _markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    machine = report["machine"]
    lines = [
        "# CPU side of `cyclepose infer`, before and after (zero-cost runner, `cpu_side.py`)",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} usable cores. "
        f"{len(args.base)} + {len(args.new)} results run alternately; medians over the pooled timed "
        "runs. Stage columns: seconds (threads overlap).",
        "",
        "| slide | cores | side | runs | total MPix/s | wall s | MPix/CPU-s | " + " | ".join(STAGES) + " |",
        "|---|--:|---|--:|--:|--:|--:|" + "--:|" * len(STAGES),
    ]
    for row in report["rows"]:
        cells = " | ".join(f"{row[s]:.3f}" if row[s] > 0 else "-" for s in STAGES)
        lines.append(
            f"| {row['size']}^2 | {row['cores']} | {row['side']} | {row['runs']} | {row['mpix_s']:.2f} | "
            f"{row['wall']:.3f} | {row['mpix_cpu_s']:.2f} | {cells} |"
        )
    lines += ["", "MPix/s of each result (its median wall time), in the order given:", ""]
    for row in report["rows"]:
        spread = ", ".join(f"{v:.2f}" for v in row["mpix_s_per_file"].values())
        lines.append(f"- {row['size']}^2, {row['cores']} core(s), {row['side']}: {spread}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
