"""Latency statistics and the timing loop behind `cyclepose bench` and benchmarks/run_suite.py.

Works on any `Runner` (runtime/backends), so every backend is measured by the same loop; what to run
comes from runtime/model/artifacts.py, the input tiles from the caller. No torch here.

Percentiles are nearest-rank, like trtexec: the p-th percentile of n sorted samples is the sample at
rank ceil(p/100 * n) (1-based), i.e. the smallest sample with at least p % of samples at or below it.
The median is the 50th nearest-rank percentile (the lower middle sample when n is even). No interpolation,
so every reported figure is a latency that was actually observed.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from cyclepose_deploy.errors import OptionError
from cyclepose_deploy.runtime.backends.base import Runner

SCHEMA = "cyclepose-bench/1"
PERCENTILES = (50, 90, 95, 99)


TileMaker = Callable[[int, int, int], np.ndarray]
"""(batch, channels, tile) -> a float32 (batch, channels, tile, tile) input batch, normalised like a slide's
tiles (e.g. synth.tiles.synthetic_tiles: realistic nuclei, so data-dependent kernels see real work)."""


def nearest_rank(samples: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of `samples` (any order); percent in [0, 100]."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    ordered = sorted(samples)
    rank = math.ceil(Fraction(str(percent)) * len(ordered) / 100)  # exact: no 0.1 * 100 = 9.999 surprises
    return float(ordered[max(rank, 1) - 1])


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latencies in milliseconds; percentiles are nearest-rank (see module docstring)."""

    count: int
    min: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float], divide_by: int = 1) -> LatencyStats:
        """Stats of `samples` (seconds) in ms, each divided by `divide_by` (e.g. batch -> per tile)."""
        ms = [1000.0 * s / divide_by for s in samples]
        p50, p90, p95, p99 = (nearest_rank(ms, p) for p in PERCENTILES)
        return cls(len(ms), min(ms), p50, p90, p95, p99, max(ms), float(np.mean(ms)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Timings:
    """Raw per-iteration samples: host wall time around `infer`, and the runner's own phases if any."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)


def time_runner(runner: Runner, batch: np.ndarray, iters: int, warmup: int) -> Timings:
    """Run `warmup` untimed then `iters` timed inferences of `batch`.

    Wall time is measured around the whole `infer` call (input copy, compute, output copy, sync).
    Process CPU time (all threads) is kept beside it: on a shared machine CPU seconds per wall second
    well below the thread count means the figures were slowed by other load.
    The runner's own phases (`last_timings`, seconds; the native TensorRT runner reports h2d, compute
    and d2h from CUDA events) are recorded per iteration too.
    """
    for _ in range(warmup):
        runner.infer(batch)
    timings = Timings()
    for _ in range(iters):
        start, cpu = time.perf_counter(), time.process_time()
        runner.infer(batch)
        timings.wall.append(time.perf_counter() - start)
        timings.cpu.append(time.process_time() - cpu)
        for phase, seconds in runner.last_timings.items():
            timings.phases.setdefault(phase, []).append(float(seconds))
    return timings


@dataclass
class BenchResult:
    """One (artifact, batch size) measurement, as it goes to the table and the JSON."""

    artifact: str
    backend: str
    device: str
    precision: str
    tile: int
    batch: int
    channels: int
    iters: int
    warmup: int
    latency_batch_ms: LatencyStats
    latency_tile_ms: LatencyStats
    throughput_tiles_per_s: float
    throughput_mpix_per_s: float
    cpu_seconds_per_wall_second: float
    phases_ms: dict[str, LatencyStats] = field(default_factory=dict)
    runner_info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phases_ms"] = {k: v.to_dict() for k, v in self.phases_ms.items()}
        return data


def summarize(timings: Timings, *, batch: int, tile: int) -> dict[str, Any]:
    """Latency stats per batch and per tile, and sustained throughput (all tiles / all timed seconds)."""
    total = sum(timings.wall)
    tiles_per_s = batch * len(timings.wall) / total if total > 0 else float("inf")
    return {
        "latency_batch_ms": LatencyStats.from_seconds(timings.wall),
        "latency_tile_ms": LatencyStats.from_seconds(timings.wall, divide_by=batch),
        "throughput_tiles_per_s": tiles_per_s,
        "throughput_mpix_per_s": tiles_per_s * tile * tile / 1e6,
        "cpu_seconds_per_wall_second": sum(timings.cpu) / total if total > 0 else 0.0,
        "phases_ms": {k: LatencyStats.from_seconds(v) for k, v in timings.phases.items()},
    }


def bench_runner(
    runner: Runner,
    *,
    artifact: str,
    tile: int,
    batches: Sequence[int],
    iters: int,
    warmup: int,
    make_tiles: TileMaker,
) -> list[BenchResult]:
    """Measure an activated runner at each batch size on `make_tiles(batch, channels, tile)`; a tile off
    the size multiple or a batch outside the engine profile raises UserError before any timing."""
    if iters < 1 or warmup < 0:
        raise OptionError("iters", f"{{iters}} must be >= 1 and {{warmup}} >= 0; got {iters} and {warmup}")
    meta = runner.input_metadata()
    channels = meta.channels or 1
    results = []
    for batch in batches:
        check_shape(runner, batch, tile)
        timings = time_runner(runner, make_tiles(batch, channels, tile), iters, warmup)
        results.append(
            BenchResult(
                artifact=artifact,
                backend=runner.name,
                device=runner.device,
                precision=runner.precision,
                tile=tile,
                batch=batch,
                channels=channels,
                iters=iters,
                warmup=warmup,
                runner_info=runner.info(),
                **summarize(timings, batch=batch, tile=tile),
            )
        )
    return results


def report(results: Sequence[BenchResult], *, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: schema, when, where (host), how (settings), and one entry per measurement."""
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "percentile_method": "nearest-rank (no interpolation), like trtexec",
        "host": host_info(),
        "settings": dict(settings),
        "results": [r.to_dict() for r in results],
    }


def check_shape(runner: Runner, batch: int, tile: int) -> None:
    """Refuse shapes before timing: tiles off the size multiple, batches outside an engine profile."""
    meta = runner.input_metadata()
    multiple = meta.size_multiple
    if tile < multiple or tile % multiple:
        fix = max(multiple, round(tile / multiple) * multiple)
        raise OptionError(
            "tile", f"{{tile}} must be a positive multiple of {multiple}, got {tile}; try {fix}"
        )
    meta.check(batch, tile, tile)


def host_info() -> dict[str, Any]:
    """What the numbers depend on, cheaply: CPU, cores, load, thread env, key library versions."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "numpy": np.__version__,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
