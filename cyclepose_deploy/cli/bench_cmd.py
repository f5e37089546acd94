"""`cyclepose bench`: latency per batch and per tile, and throughput, for exported artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cyclepose_deploy import defaults
from cyclepose_deploy.cli.common import parse_int_list, user_errors


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


@user_errors
def bench(
    model: list[Path] = typer.Option(
        ...,
        "--model",
        "--engine",
        help="Export folder (benches every verified artifact) or a .onnx/.engine/.plan/.trt file; "
        "repeatable. --engine is an alias.",
    ),
    tile: int = typer.Option(
        defaults.TILE, help=f"Tile side in pixels (a multiple of {defaults.SIZE_MULTIPLE})."
    ),
    batch: str = typer.Option(f"1,{defaults.BATCH}", help="Batch sizes, comma-separated."),
    iters: int = typer.Option(20, min=1, help="Timed iterations per batch size."),
    warmup: int = typer.Option(3, min=0, help="Untimed iterations first (caches, allocators, autotuning)."),
    threads: int = typer.Option(None, min=1, help="CPU threads for ONNX Runtime (default: all cores)."),
    providers: str = typer.Option("cpu", help="ONNX Runtime providers for .onnx: cpu, cuda, tensorrt."),
    json_out: Path = typer.Option(None, "--json", help="Also write every figure to this JSON file."),
) -> None:
    """Time each artifact on a realistic normalised tile: min/median/p90/p95/p99/max latency
    (nearest-rank percentiles, like trtexec), tiles/s and MPix/s."""
    from cyclepose_deploy.atomic import check_writable, write_json_atomic
    from cyclepose_deploy.runtime import benchmark
    from cyclepose_deploy.runtime.model.artifacts import resolve_models
    from cyclepose_deploy.synth.tiles import synthetic_tiles

    batches = parse_int_list(batch, "--batch")
    _check(tile, batches, iters, warmup, threads)
    if json_out is not None:
        check_writable(json_out)
    models = resolve_models(model)
    provider_list = [p.strip() for p in providers.split(",") if p.strip()]
    results = []
    for found in models:
        with found.runner(threads=threads, providers=provider_list) as runner:
            results += benchmark.bench_runner(
                runner,
                artifact=str(found.path),
                tile=tile,
                batches=batches,
                iters=iters,
                warmup=warmup,
                make_tiles=synthetic_tiles,
            )
    settings = dict(tile=tile, batches=batches, iters=iters, warmup=warmup)
    settings.update(threads=threads, providers=provider_list)
    report = benchmark.report(results, settings=settings)
    print_table(report["results"])
    if json_out is not None:
        write_json_atomic(json_out, report)


def _check(tile: int, batches: list[int], iters: int, warmup: int, threads: int | None) -> None:
    """The declared ranges (cyclepose_deploy.limits.BENCH), and tile x tile x batch within memory,
    before any model is loaded."""
    from cyclepose_deploy import limits
    from cyclepose_deploy.errors import OptionError

    limits.BENCH["tile"].check("tile", tile)
    for size in batches:
        limits.BENCH["batch"].check("batch", size)
        if size * tile * tile > limits.MAX_BATCH_PIXELS:
            raise OptionError(
                "batch",
                f"{{batch}} {size} of {tile} px tiles is {size * tile * tile:,} px per call, over the "
                f"{limits.MAX_BATCH_PIXELS:,} that fit in memory: lower {{batch}} or {{tile}}",
            )
    limits.BENCH["iters"].check("iters", iters)
    limits.BENCH["warmup"].check("warmup", warmup)
    if threads is not None:
        limits.threads().check("threads", threads)


def print_table(rows: list[dict[str, Any]]) -> None:
    """One row per artifact and batch: per-tile latency spread, throughput, and GPU phases when known."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cyclepose bench: ms per tile unless noted; percentiles nearest-rank")
    for name in ("artifact", "on", "prec", "N"):
        table.add_column(name)
    for name in ("batch med", "min", "med", "p90", "p95", "p99", "max", "tiles/s", "MPix/s", "GPU phases"):
        table.add_column(name, justify="right")
    for r in rows:
        tile = r["latency_tile_ms"]
        phases = " ".join(f"{k} {v['median']:.2f}" for k, v in r["phases_ms"].items())
        table.add_row(
            Path(r["artifact"]).name,
            f"{r['backend'].split(':')[0]}/{r['device']}",
            r["precision"],
            str(r["batch"]),
            f"{r['latency_batch_ms']['median']:.1f}",
            *(f"{tile[k]:.2f}" for k in ("min", "median", "p90", "p95", "p99", "max")),
            f"{r['throughput_tiles_per_s']:.1f}",
            f"{r['throughput_mpix_per_s']:.2f}",
            phases or "-",
        )
    Console(width=max(Console().width, 140)).print(table)
