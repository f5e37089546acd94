"""Choose what to run: an .onnx file, a TensorRT .engine, or an export folder (best artifact here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime import optional
from cyclepose_deploy.runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    TensorRTInfo,
    load_manifest,
    verify_artifact,
)

CPU_ORDER = ("int8", "fp32", "fp16")  # fastest first on CPU (fp16 is no faster than fp32 there)
DEFAULT_DIAMETER = (10.0, 30.0)


@dataclass(frozen=True)
class Model:
    """The chosen artifact and what the runtime needs to know about it (defaults for a bare .onnx)."""

    path: Path
    format: str
    precision: str
    diameter: tuple[float, float] = DEFAULT_DIAMETER
    flow_scale: float = 5.0
    lower: float = 1.0
    upper: float = 99.0
    from_manifest: bool = False
    channels: int = 1
    tensorrt: TensorRTInfo | None = None

    @property
    def train_diameter(self) -> float:
        return 0.5 * (self.diameter[0] + self.diameter[1])

    def describe(self) -> str:
        source = "manifest" if self.from_manifest else "no manifest: defaults"
        return f"{self.path.name} ({self.format} {self.precision}, {source})"

    def runner(self) -> Any:
        if self.format == "onnx":
            from cyclepose_deploy.runtime.backends.ort import OrtRunner

            return OrtRunner(self.path, precision=self.precision)
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


def resolve_model(path: str | Path) -> Model:
    """An export folder, a file inside one (hash-checked), or a bare .onnx / .engine file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--engine {path} not found: give an .onnx, an .engine or an export folder")
    if path.is_dir():
        manifest = load_manifest(path)
        return _from_manifest(manifest, choose_artifact(manifest, gpu_tensorrt_available()))
    if path.suffix not in (".onnx", ".engine", ".plan"):
        raise UserError(
            f"--engine {path} is neither .onnx nor .engine: give a model file or an export folder"
        )
    if (path.parent / MANIFEST_NAME).is_file():
        manifest = load_manifest(path.parent)
        return _from_manifest(manifest, verify_artifact(manifest, path))
    if path.suffix != ".onnx":
        raise UserError(f"engine {path} has no {MANIFEST_NAME} beside it: keep it in its export folder")
    from cyclepose_deploy.runtime.backends.ort import precision_from_path

    return Model(path, "onnx", precision_from_path(path))


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


def _from_manifest(manifest: Manifest, path: Path) -> Model:
    art = next(a for a in manifest.artifacts if a.file == path.name)
    norm = manifest.normalization
    return Model(
        path,
        art.format,
        art.precision,
        diameter=(float(manifest.diameter[0]), float(manifest.diameter[1])),
        flow_scale=float(manifest.flow_scale),
        lower=float(norm.get("lower", 1.0)),
        upper=float(norm.get("upper", 99.0)),
        from_manifest=True,
        channels=manifest.channels,
        tensorrt=manifest.tensorrt,
    )
