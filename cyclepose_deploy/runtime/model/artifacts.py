"""The one artifact resolver: what to run, from an export folder, a file inside one, or a bare model file.

Used by `cyclepose infer` (the best artifact for this machine), `cyclepose bench` (every verified one) and
export's verification (a runner for a freshly written file). Accepted files: .onnx (ONNX Runtime) and
.engine / .plan / .trt (a TensorRT engine, which needs the manifest of its export beside it). A file
listed in a manifest is hash-checked, and its precision, diameter and normalisation come from there;
a bare .onnx gets the defaults of defaults.py and the precision its name says.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cyclepose_deploy import defaults, optional
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.backends.ort import precision_from_path
from cyclepose_deploy.runtime.model.manifest import (
    MANIFEST_NAME,
    Manifest,
    TensorRTInfo,
    load_manifest,
    verify_artifact,
)

SUFFIX_FORMATS = {".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}
ACCEPTED = "an export folder or a .onnx / .engine / .plan / .trt file"
CPU_ORDER = ("int8", "fp32", "fp16")  # fastest first on CPU (fp16 is no faster than fp32 there)
ENGINE_PRECISION = "fp16"  # engines are built from the fp16 ONNX


@dataclass(frozen=True)
class Model:
    """One artifact and what the runtime needs to know about it (defaults for a bare .onnx)."""

    path: Path
    format: str
    precision: str
    diameter: tuple[float, float] = defaults.DIAMETER
    flow_scale: float = defaults.FLOW_SCALE
    lower: float = defaults.PERCENTILES[0]
    upper: float = defaults.PERCENTILES[1]
    from_manifest: bool = False
    channels: int = 1
    tensorrt: TensorRTInfo | None = None
    max_extent: float | None = None  # the manifest's longest nucleus extent (px), when it records one

    @property
    def train_diameter(self) -> float:
        return 0.5 * (self.diameter[0] + self.diameter[1])

    @property
    def extent(self) -> float:
        """Longest extent of a nucleus in pixels, for the chunk halo (see runtime/defaults.extent_for)."""
        return defaults.extent_for(self.diameter[1], self.max_extent)

    def describe(self) -> str:
        source = "manifest" if self.from_manifest else "no manifest: defaults"
        return f"{self.path.name} ({self.format} {self.precision}, {source})"

    def runner(self, *, threads: int | None = None, providers: list[str] | None = None) -> Runner:
        """An inactive runner for this artifact; TensorRT is imported only when an engine is asked for.
        `threads` and `providers` (cpu, cuda, tensorrt) apply to ONNX Runtime."""
        if self.format == "onnx":
            from cyclepose_deploy.runtime.backends.ort import OrtRunner

            return OrtRunner(self.path, providers=providers, threads=threads, precision=self.precision)
        if not gpu_tensorrt_available():
            raise UserError(
                f"{self.path.name} is a TensorRT engine, but tensorrt / cuda-bindings are missing here: "
                "use the .onnx from the same export folder, or install 'cyclepose-deploy[tensorrt]'"
            )
        if self.tensorrt is None:
            raise UserError(
                f"the manifest beside {self.path.name} has no tensorrt section: re-export the engine"
            )
        from cyclepose_deploy.runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(self.path, self.tensorrt, self.channels)


def gpu_tensorrt_available() -> bool:
    return optional.has_module("tensorrt") and optional.has_module("cuda.bindings.runtime")


def format_of(path: Path) -> str:
    """'onnx' or 'tensorrt' from the file suffix; anything else is a UserError naming what is accepted."""
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"model {path} is not a model file: give {ACCEPTED}")
    return fmt


def resolve_model(path: str | os.PathLike[str]) -> Model:
    """The artifact to run: for an export folder the best verified one for this machine (see
    choose_artifact); for a file, that file (hash-checked when a manifest sits beside it)."""
    path = _existing(path)
    if path.is_dir():
        manifest = load_manifest(path)
        return model_from_manifest(manifest, choose_artifact(manifest, gpu_tensorrt_available()))
    return _model_from_file(path)


def resolve_models(paths: Sequence[str | os.PathLike[str]]) -> list[Model]:
    """Every artifact to compare: an export folder gives each one that passed verification (hash-checked),
    a file gives itself."""
    models: list[Model] = []
    for raw in paths:
        path = _existing(raw)
        if path.is_dir():
            models.extend(_verified_models(load_manifest(path)))
        else:
            models.append(_model_from_file(path))
    if not models:
        raise UserError(f"no model given: pass {ACCEPTED}")
    return models


def _existing(raw: str | os.PathLike[str]) -> Path:
    path = Path(raw)
    if not path.exists():
        raise UserError(f"model {path} not found: give {ACCEPTED}")
    return path


def _model_from_file(path: Path) -> Model:
    fmt = format_of(path)
    if (path.parent / MANIFEST_NAME).is_file():
        manifest = load_manifest(path.parent)
        return model_from_manifest(manifest, verify_artifact(manifest, path))
    if fmt != "onnx":
        raise UserError(
            f"engine {path} has no {MANIFEST_NAME} beside it (it records the TensorRT version and GPU "
            "the engine needs): keep the engine in its export folder"
        )
    return Model(path, fmt, precision_from_path(path))


def _verified_models(manifest: Manifest) -> list[Model]:
    passed = [a for a in manifest.artifacts if a.passed]
    if not passed:
        raise UserError(
            f"{manifest.root} has no artifact that passed verification: re-run `cyclepose export`"
        )
    return [model_from_manifest(manifest, verify_artifact(manifest, a.file)) for a in passed]


def choose_artifact(manifest: Manifest, has_tensorrt: bool) -> Path:
    """On a GPU with TensorRT the engine; otherwise the fastest verified ORT artifact (int8 > fp32 > fp16)."""
    passed = [a for a in manifest.artifacts if a.passed]
    candidates = []
    if has_tensorrt:
        candidates += [a for a in passed if a.format == "tensorrt"]
    candidates += sorted(
        (a for a in passed if a.format == "onnx" and a.precision in CPU_ORDER),
        key=lambda a: CPU_ORDER.index(a.precision),
    )
    if not candidates:
        have = ", ".join(
            f"{a.format}/{a.precision}{'' if a.passed else ' (failed)'}" for a in manifest.artifacts
        )
        raise UserError(
            f"no usable artifact in {manifest.root} (it has {have or 'nothing'}): re-export the model"
        )
    return verify_artifact(manifest, candidates[0].file)


def model_from_manifest(manifest: Manifest, path: Path) -> Model:
    """The Model of an artifact listed in `manifest` (its path already verified)."""
    art = next(a for a in manifest.artifacts if a.file == path.name)
    norm = manifest.normalization
    return Model(
        path,
        art.format,
        art.precision,
        diameter=(float(manifest.diameter[0]), float(manifest.diameter[1])),
        flow_scale=float(manifest.flow_scale),
        lower=float(norm.get("lower", defaults.PERCENTILES[0])),
        upper=float(norm.get("upper", defaults.PERCENTILES[1])),
        from_manifest=True,
        channels=manifest.channels,
        tensorrt=manifest.tensorrt,
        max_extent=manifest.max_extent,
    )


def model_from_file(
    path: str | os.PathLike[str],
    *,
    precision: str | None = None,
    channels: int = 1,
    tensorrt: TensorRTInfo | None = None,
) -> Model:
    """A Model for a file that has no manifest yet (export's verification of what it just wrote)."""
    path = Path(path)
    fmt = format_of(path)
    default = precision_from_path(path) if fmt == "onnx" else ENGINE_PRECISION
    return Model(path, fmt, precision or default, channels=channels, tensorrt=tensorrt)
