"""The suite's JSON as Markdown tables, for benchmarks/results/<machine>.md and the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown(result: dict[str, Any]) -> str:
    parts = [_header(result)]
    if "network" in result:
        parts.append(network_table(result["network"], result.get("accuracy", [])))
    if "slides" in result:
        parts.append(slides_table(result["slides"]))
    if "dynamics" in result:
        parts.append(dynamics_table(result["dynamics"]))
    parts.append(_footer(result))
    return "\n\n".join(parts) + "\n"


def _header(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    gpu = ", ".join(g.get("name", "?") for g in m.get("gpus", [])) or "no GPU"
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
    load = m.get("load_average") or [float("nan")]
    end = (m.get("load_average_end") or [float("nan")])[0]
    busy = max(load[0], end) > 0.5 * (m.get("usable_cores") or 1)
    warning = (
        f"\n\n**Warning: the machine was busy (load {load[0]:.1f} at start, {end:.1f} at end, on "
        f"{m.get('usable_cores')} cores; niceness {m.get('niceness')}): these figures are pessimistic.**"
        if busy
        else ""
    )
    return (
        f"### {m.get('cpu')} ({m.get('usable_cores')} cores, {m.get('memory_gib')} GiB), {gpu}\n\n"
        f"{result['created']}, {s['mode']} run: tile {s['tile']}, batches {s['batches']}, "
        f"{s['iters']} timed iterations after {s['warmup']} warm-up, threads {s['threads'] or 'all cores'}, "
        f"load average at start {load[0]:.2f}. {libs}.{warning}"
    )


def network_table(rows: list[dict[str, Any]], accuracy: list[dict[str, Any]]) -> str:
    """One line per backend/precision/batch; speed-up is throughput over torch eager at the same batch."""
    f1 = {a["file"]: a.get("f1_vs_fp32") for a in accuracy}
    torch = {r["batch"]: r["throughput_tiles_per_s"] for r in rows if r.get("backend") == "torch"}
    lines = [
        "| network | backend | device | precision | batch | ms/tile median | ms/tile p99 | tiles/s | MPix/s "
        "| vs torch | mask F1 vs fp32 |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['artifact']} | skipped: {r['skipped']} |||||||||| ")
            continue
        name = Path(r["artifact"]).name
        base = torch.get(r["batch"])
        speedup = f"{r['throughput_tiles_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {name} | {r['backend'].split(':')[0]} | {r['device']} | {r['precision']} | {r['batch']} "
            f"| {r['latency_tile_ms']['median']:.2f} | {r['latency_tile_ms']['p99']:.2f} "
            f"| {r['throughput_tiles_per_s']:.1f} | {r['throughput_mpix_per_s']:.2f} | {speedup} "
            f"| {_fmt(f1.get(name))} |"
        )
    return "#### Network (S), per tile\n\n" + "\n".join(lines)


def slides_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| slide | MPix | seconds | MPix/s | peak RSS MiB | model |", "|---|--:|--:|--:|--:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['side']}x{r['side']} | {r['mpix']:.1f} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(
                f"| {r['side']}x{r['side']} | {r['mpix']:.1f} | {r['seconds']:.1f} | {r['mpix_per_s']:.3f} "
                f"| {r['peak_rss_mib']:.0f} | {r.get('model') or '-'} |"
            )
    return "#### End to end: `cyclepose infer` on synthetic slides\n\n" + "\n".join(lines)


def dynamics_table(rows: list[dict[str, Any]]) -> str:
    head = "| image | objects | AP@0.9 round trip | chunked == whole | seconds | MPix/s | MPix/CPU-s |"
    lines = [head, "|---|--:|--:|---|--:|--:|--:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| skipped: {r['skipped']} | | | | | | |")
        else:
            lines.append(
                f"| {r['side']}x{r['side']} | {r['objects_true']} | {_fmt(r.get('round_trip_ap_at_0.9'))} "
                f"| {r.get('chunked_equals_whole', '-')} | {r['seconds']:.2f} | {r['mpix_per_s']:.2f} "
                f"| {_fmt(r.get('mpix_per_cpu_s'), 2)} |"
            )
    return "#### Flow dynamics: flows_to_labels on true flows (benchmarks/bench_dynamics.py)\n\n" + "\n".join(
        lines
    )


def _footer(result: dict[str, Any]) -> str:
    quick = " --quick" if result["settings"]["mode"] == "quick" else ""
    return (
        "Latency percentiles are nearest-rank (like trtexec); each backend ran in its own process. "
        f"Suite time {result.get('suite_seconds')} s. Reproduce:\n\n"
        f"    python benchmarks/run_suite.py --export EXPORT_DIR{quick}"
    )


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"
