"""cyclepose-deploy: annotation-free nuclei segmentation, from training to tiled deployment.

`Segmenter` (runtime.api) is the Python entry point; it needs no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["InferOptions", "SegmentResult", "Segmenter", "SlideOptions", "__version__"]

if TYPE_CHECKING:
    from cyclepose_deploy.runtime.api import Segmenter
    from cyclepose_deploy.runtime.run.options import InferOptions
    from cyclepose_deploy.runtime.run.result import SegmentResult
    from cyclepose_deploy.runtime.source.slide import SlideOptions

_LAZY = {
    "Segmenter": "cyclepose_deploy.runtime.api",
    "InferOptions": "cyclepose_deploy.runtime.run.options",
    "SegmentResult": "cyclepose_deploy.runtime.run.result",
    "SlideOptions": "cyclepose_deploy.runtime.source.slide",
}


def __getattr__(name: str) -> Any:
    # lazy, so `import cyclepose_deploy` (and the CLI's start) stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cyclepose_deploy' has no attribute {name!r}")
