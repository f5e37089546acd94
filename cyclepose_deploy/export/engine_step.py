"""The TensorRT step of an export: build and verify the engine where TensorRT and a GPU exist, or say in
one line why not and print the commands that build it on the target."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cyclepose_deploy import optional
from cyclepose_deploy.export.loaders import SaveBytes
from cyclepose_deploy.export.profiles import Profile
from cyclepose_deploy.export.tensorrt_build import (
    EngineBytesFromNetwork,
    NetworkFromOnnx,
    export_command,
    trtexec_command,
)
from cyclepose_deploy.runtime.model.manifest import TensorRTInfo

ENGINE_NAME = "model.engine"


@dataclass(frozen=True)
class EngineTarget:
    checkpoint: Path
    out_dir: Path
    fp16_onnx: Path
    profile: Profile
    channels: int


def tensorrt_unavailable_reason() -> str | None:
    """None when an engine can be built here, else why not (one line)."""
    if not optional.has_module("tensorrt"):
        return "TensorRT is not installed here"
    if not optional.has_module("cuda.bindings.runtime"):
        return "cuda-python (cuda-bindings) is not installed here"
    try:
        from cyclepose_deploy.runtime.backends.cuda import device_properties

        device_properties(0)
    except Exception as exc:
        return f"no usable NVIDIA GPU here ({exc})"
    return None


def engine_instructions(target: EngineTarget, reason: str, fp16_written: bool) -> list[str]:
    """The lines printed instead of building: why, and the exact commands for the target machine
    (naming only the profile and ONNX files that exist: the default profile needs no --profile, and
    without the fp16 ONNX trtexec builds from the fp32 one with TensorRT 10's --fp16)."""
    engine = target.out_dir / ENGINE_NAME
    lines = [
        f"engine: skipped, {reason}; the ONNX artifacts were written.",
        "  build it on the target with:",
        f"    {export_command(target.checkpoint, target.out_dir, target.profile.name)}",
    ]
    if fp16_written:
        lines.append("  or with trtexec (TensorRT 11: --stronglyTyped; TensorRT 10: replace it with --fp16):")
        lines.append(
            f"    {trtexec_command(target.fp16_onnx, engine, target.profile, target.channels, None)}"
        )
    else:
        fp32 = target.out_dir / "model.onnx"
        lines.append(
            "  or with TensorRT 10's trtexec (TensorRT 11 needs the fp16 ONNX: add fp16 to --precision):"
        )
        lines.append(f"    {trtexec_command(fp32, engine, target.profile, target.channels, '10.0')}")
    return lines


def build_engine(target: EngineTarget) -> tuple[Path, TensorRTInfo]:
    """fp16 ONNX -> engine file, with a reused timing cache; returns the path and what it is tied to."""
    import tensorrt as trt

    from cyclepose_deploy.runtime.backends.cuda import device_properties

    engine = target.out_dir / ENGINE_NAME
    gpu, capability = device_properties(0)
    network = NetworkFromOnnx(target.fp16_onnx)
    cache = timing_cache_path(trt.__version__, capability)
    SaveBytes(EngineBytesFromNetwork(network, target.profile, target.channels, cache), engine)()
    profile = {"name": target.profile.name, "batch": list(target.profile.batch)}
    profile["tile"] = list(target.profile.tile_range)
    return engine, TensorRTInfo(trt.__version__, gpu, capability, profile)


def timing_cache_path(version: str, capability: str) -> Path:
    """One timing cache per TensorRT version and GPU architecture, reused by every export on this machine."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cyclepose"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"trt-{version}-sm{capability.replace('.', '')}.timing.cache"
