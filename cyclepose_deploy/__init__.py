"""cyclepose-deploy: annotation-free nuclei segmentation, from training to tiled deployment.

`Segmenter` (runtime.api) is the Python entry point; it needs no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "SlideOptions", "__version__"]

if TYPE_CHECKING:
    from cyclepose_deploy.runtime.api import Segmenter
    from cyclepose_deploy.runtime.source.slide import SlideOptions


def __getattr__(name: str) -> Any:
    # lazy, so `import cyclepose_deploy` (and the CLI's start) stays light
    if name == "Segmenter":
        from cyclepose_deploy.runtime.api import Segmenter

        return Segmenter
    if name == "SlideOptions":
        from cyclepose_deploy.runtime.source.slide import SlideOptions

        return SlideOptions
    raise AttributeError(f"module 'cyclepose_deploy' has no attribute {name!r}")
