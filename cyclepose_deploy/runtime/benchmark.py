"""Latency statistics and the timing loop behind `cyclepose bench` and benchmarks/run_suite.py.

Works on any `Runner` (runtime/backends), so every backend is measured by the same loop. No torch here.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.normalize import Normalization

SCHEMA = "cyclepose-bench/1"
PERCENTILES = (50, 90, 95, 99)


class RunnerLike(Protocol):
    """What the timing loop needs from a runner (docs/CONTRACTS.md, Backends)."""

    name: str

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


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


def time_runner(runner: RunnerLike, batch: np.ndarray, iters: int, warmup: int) -> Timings:
    """Run `warmup` untimed then `iters` timed inferences of `batch`.

    Wall time is measured around the whole `infer` call (input copy, compute, output copy, sync).
    Process CPU time (all threads) is kept beside it: on a shared machine CPU seconds per wall second
    well below the thread count means the figures were slowed by other load.
    A runner that fills `last_timings: dict[str, float]` (seconds; the native TensorRT runner reports
    h2d, compute and d2h, compute from CUDA events) gets those phases recorded per iteration too.
    """
    for _ in range(warmup):
        runner.infer(batch)
    timings = Timings()
    for _ in range(iters):
        start, cpu = time.perf_counter(), time.process_time()
        runner.infer(batch)
        timings.wall.append(time.perf_counter() - start)
        timings.cpu.append(time.process_time() - cpu)
        for phase, seconds in _phases(runner).items():
            timings.phases.setdefault(phase, []).append(float(seconds))
    return timings


def _phases(runner: Any) -> dict[str, float]:
    """The runner's own per-phase seconds: `last_timings` if it has them, else its total GPU time."""
    phases = getattr(runner, "last_timings", None)
    if phases:
        return dict(phases)
    gpu = getattr(runner, "last_gpu_time", None)
    return {"gpu": gpu} if gpu is not None else {}


def synthetic_tiles(batch: int, channels: int, tile: int, seed: int = 0) -> np.ndarray:
    """A realistic, normalised input batch (N, C, tile, tile): blurred nuclei with texture and noise,
    so that data-dependent kernels see what a slide gives them, not zeros."""
    from scipy import ndimage

    from cyclepose_deploy.synth.shapes import ShapePrior, pack_instances

    rng = np.random.default_rng(seed)
    out = np.empty((batch, channels, tile, tile), dtype=np.float32)
    for i in range(batch):
        labels = pack_instances(rng, (tile, tile), ShapePrior(coverage=0.3))
        brightness = rng.uniform(0.5, 1.0, int(labels.max()) + 1)
        brightness[0] = 0.0
        for c in range(channels):
            signal = brightness[labels] * (1.0 + 0.2 * rng.standard_normal(labels.shape))
            raw = 100.0 + 800.0 * ndimage.gaussian_filter(signal, 1.0)
            raw = rng.poisson(np.clip(raw, 0, None)).astype(np.float32)
            out[i, c] = Normalization.from_sample(raw).apply(raw)
    return out


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
    runner: Any, *, artifact: str, tile: int, batches: Sequence[int], iters: int, warmup: int, seed: int = 0
) -> list[BenchResult]:
    """Measure an activated runner at each batch size; batches outside its engine profile raise UserError."""
    if iters < 1 or warmup < 0:
        raise UserError(f"--iters must be >= 1 and --warmup >= 0; got {iters} and {warmup}")
    channels = int(getattr(runner, "channels", None) or 1)
    results = []
    for batch in batches:
        check_shape(runner, batch, tile)
        data = synthetic_tiles(batch, channels, tile, seed)
        timings = time_runner(runner, data, iters, warmup)
        results.append(
            BenchResult(
                artifact=artifact,
                backend=str(runner.name),
                device=str(getattr(runner, "device", "unknown")),
                precision=str(getattr(runner, "precision", "unknown")),
                tile=tile,
                batch=batch,
                channels=channels,
                iters=iters,
                warmup=warmup,
                runner_info=runner_info(runner),
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


def check_shape(runner: Any, batch: int, tile: int) -> None:
    """Refuse shapes before timing: tiles off the size multiple, batches outside an engine profile."""
    multiple = int(getattr(runner, "size_multiple", 16) or 16)
    if tile < multiple or tile % multiple:
        fix = max(multiple, round(tile / multiple) * multiple)
        raise UserError(f"--tile must be a positive multiple of {multiple}, got {tile}; try {fix}")
    limits = getattr(runner, "shape_limits", None)
    if limits is not None:
        limits.check(batch, tile, tile)


def runner_info(runner: Any) -> dict[str, Any]:
    """Settings that change the numbers (threads, providers, ORT session options), as the runner has them."""
    info: dict[str, Any] = {}
    for attr in ("threads", "provider", "requested", "engine_info"):
        value = getattr(runner, attr, None)
        if value is not None and not callable(value):
            info[attr] = value if isinstance(value, (str, int, float, bool, list, dict)) else str(value)
    session = getattr(runner, "session", None)
    if session is not None and hasattr(session, "get_session_options"):
        info["providers"] = list(session.get_providers())
        opts = session.get_session_options()
        info["session_options"] = {
            name: _plain(getattr(opts, name, None))
            for name in (
                "intra_op_num_threads",
                "inter_op_num_threads",
                "execution_mode",
                "graph_optimization_level",
                "enable_cpu_mem_arena",
                "enable_mem_pattern",
            )
        }
    return info


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def host_info() -> dict[str, Any]:
    """What the numbers depend on, cheaply: CPU, cores, load, thread env, key library versions."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class Target:
    """One artifact to benchmark: a file, its format (onnx | tensorrt), precision, and its export folder."""

    path: str
    format: str
    precision: str
    export: str | None = None


SUFFIX_FORMATS = {".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}


def resolve_targets(paths: Sequence[str | os.PathLike[str]]) -> list[Target]:
    """Expand each ARTIFACT: an export folder gives every verified artifact in its manifest (sha256
    checked), a .onnx/.engine file gives itself. Anything else is a UserError naming what is accepted."""
    targets: list[Target] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            targets.extend(_targets_from_export(path))
        elif not path.exists():
            raise UserError(f"artifact {path} does not exist: pass an export folder or a .onnx/.engine file")
        elif path.suffix.lower() in SUFFIX_FORMATS:
            targets.append(_target_from_file(path))
        else:
            raise UserError(f"cannot benchmark {path.name}: pass an export folder or a .onnx/.engine file")
    if not targets:
        raise UserError("nothing to benchmark: pass --engine with an export folder or a .onnx/.engine file")
    return targets


def _targets_from_export(folder: Any) -> list[Target]:
    from cyclepose_deploy.runtime.manifest import load_manifest, verify_artifact

    manifest = load_manifest(folder)
    passed = [a for a in manifest.artifacts if a.passed]
    if not passed:
        raise UserError(f"{folder} has no artifact that passed verification: re-run `cyclepose export`")
    return [
        Target(str(verify_artifact(manifest, a.file)), a.format, a.precision, str(folder)) for a in passed
    ]


def _target_from_file(path: Any) -> Target:
    """A lone file; when a manifest sits beside it and lists it, its hash and precision come from there."""
    from cyclepose_deploy.runtime.manifest import MANIFEST_NAME, load_manifest, verify_artifact

    fmt = SUFFIX_FORMATS[path.suffix.lower()]
    if (path.parent / MANIFEST_NAME).is_file():
        manifest = load_manifest(path.parent)
        for art in manifest.artifacts:
            if art.file == path.name:
                return Target(
                    str(verify_artifact(manifest, path)), art.format, art.precision, str(path.parent)
                )
    precision = next((p for p in ("fp16", "int8") if f".{p}." in path.name), "fp32")
    return Target(str(path), fmt, precision)


def open_runner(target: Target, *, threads: int | None = None, providers: list[str] | None = None) -> Any:
    """An inactive runner for `target`; TensorRT is imported only when an engine is asked for."""
    if target.format == "onnx":
        from cyclepose_deploy.runtime.backends.ort import OrtRunner

        return OrtRunner(target.path, providers=providers, threads=threads, precision=target.precision)
    from cyclepose_deploy.runtime.backends.tensorrt import TensorRTRunner
    from cyclepose_deploy.runtime.manifest import load_manifest

    manifest = load_manifest(target.export) if target.export else None
    if manifest is None or manifest.tensorrt is None:
        raise UserError(
            f"{Path(target.path).name} needs the manifest of its export (TensorRT version and GPU check): "
            "keep manifest.json beside the engine or pass the export folder"
        )
    return TensorRTRunner(target.path, manifest.tensorrt, manifest.channels)
