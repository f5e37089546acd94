"""Lazy build steps (Polygraphy style): `XFromY` callables that take a value or a callable producing it,
so checkpoint -> ONNX -> engine is a chain that does nothing until called."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cyclepose_deploy.atomic import write_atomic

T = TypeVar("T")


class Loader:
    """Marks a lazy build step; `resolve` calls loaders and plain functions, and passes values through."""

    def __call__(self) -> Any:
        raise NotImplementedError


def resolve(value: T | Callable[[], T]) -> T:
    """A loader's argument may be the thing itself or a loader that makes it (a torch module is a value)."""
    if isinstance(value, (Loader, types.FunctionType, functools.partial)):
        return value()  # type: ignore[no-any-return,operator]
    return value  # type: ignore[return-value]


class SegmenterFromCheckpoint(Loader):
    """(S in eval mode, config) from a CyclePose checkpoint or a Cellpose 3 model file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self) -> tuple[Any, dict[str, Any]]:
        from cyclepose_deploy.train.checkpoint import load_segmenter

        return load_segmenter(self.path)


class OnnxFromTorch(Loader):
    """Writes the fp32 ONNX model of a torch network; returns its path and BatchNorm folding counts."""

    def __init__(self, net: Any, path: str | Path, channels: int, opset: int = 17) -> None:
        self.net, self.path, self.channels, self.opset = net, Path(path), channels, opset

    def __call__(self) -> tuple[Path, dict[str, int]]:
        from cyclepose_deploy.export.onnx_export import export_fp32

        return export_fp32(resolve(self.net), self.path, self.channels, self.opset)


class SaveBytes(Loader):
    """Writes bytes (e.g. a serialized engine) atomically and returns the path."""

    def __init__(self, obj: bytes | Callable[[], bytes], path: str | Path) -> None:
        self.obj, self.path = obj, Path(path)

    def __call__(self) -> Path:
        return write_atomic(self.path, bytes(resolve(self.obj)))
