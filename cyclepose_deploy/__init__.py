"""cyclepose-deploy: annotation-free nuclei segmentation, from training to tiled deployment.

`Segmenter` (cyclepose_deploy.api over runtime.api) is the Python entry point; it needs no torch, except
to export a model given by name or as a checkpoint once (export/cache.py). Loaded lazily, so `import
cyclepose_deploy` (and the CLI's start) stays light."""

from __future__ import annotations

from typing import Any

from cyclepose_deploy.version import __version__

__all__ = ["InferOptions", "SegmentResult", "Segmenter", "SlideOptions", "__version__"]

_LAZY = {
    "Segmenter": "cyclepose_deploy.api",
    "InferOptions": "cyclepose_deploy.runtime.run.options",
    "SegmentResult": "cyclepose_deploy.runtime.run.result",
    "SlideOptions": "cyclepose_deploy.runtime.source.slide",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cyclepose_deploy' has no attribute {name!r}")
