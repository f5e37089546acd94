"""Optional heavy imports in one place, with install hints: a missing one disables one feature only."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from packaging.version import InvalidVersion, Version

from cyclepose_deploy.errors import UserError

INSTALL_HINTS = {
    "onnxruntime": "pip install 'cyclepose-deploy[cpu]' (or [gpu] for onnxruntime-gpu)",
    "tensorrt": "pip install 'cyclepose-deploy[tensorrt]' on a machine with an NVIDIA GPU "
    "(on Jetson, TensorRT ships with JetPack)",
    "cuda.bindings.runtime": "pip install cuda-bindings (part of 'cyclepose-deploy[tensorrt]')",
    "onnx": "pip install 'cyclepose-deploy[torch]'",
    "torch": "pip install 'cyclepose-deploy[torch]'",
}


def has_module(name: str) -> bool:
    """True when `name` imports; never raises."""
    try:
        require(name)
    except UserError:
        return False
    return True


def require(name: str, min_version: str | None = None) -> ModuleType:
    """Import `name` or raise UserError with the install hint (and the version found when too old)."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        hint = INSTALL_HINTS.get(name, f"pip install {name}")
        raise UserError(f"{name} is not available ({exc.__class__.__name__}: {exc}): {hint}") from None
    if getattr(module, "__file__", None) is None and not hasattr(module, "__version__"):
        # e.g. a stubs-only `tensorrt/` folder imports as an empty namespace package
        hint = INSTALL_HINTS.get(name, f"pip install {name}")
        raise UserError(f"{name} is not installed (only type stubs were found): {hint}")
    if min_version is not None:
        found = str(getattr(module, "__version__", "0"))
        if release(found).release < release(min_version).release:  # pre-releases of a version count
            raise UserError(f"{name} {found} is too old, need >= {min_version}: upgrade it")
    return module


class LazyModule:
    """A module proxy that imports on first attribute access (Polygraphy's lazy_import), with the hint."""

    def __init__(self, name: str, min_version: str | None = None) -> None:
        self._name, self._min_version = name, min_version
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = require(self._name, self._min_version)
        return getattr(self._module, attr)


def onnxruntime() -> ModuleType:
    return require("onnxruntime", "1.16")


def tensorrt() -> ModuleType:
    return require("tensorrt", "10.0")


def cudart() -> ModuleType:
    return require("cuda.bindings.runtime")


def release(text: str) -> Version:
    """A version for comparisons (PEP 440, via packaging): local and dev tags are kept, e.g.
    '2.3.0+cu121' or '10.3.0.26'; an unparsable string counts as 0 (never 'new enough' by accident)."""
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")
