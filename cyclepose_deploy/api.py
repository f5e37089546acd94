"""The Python entry point users import (`from cyclepose_deploy import Segmenter`): the runtime's
Segmenter (runtime/api.py, no torch), which also takes a shipped model name (`nuclei`, `synth`) or a
checkpoint file (`.pt`, a Cellpose 3 model), exported once into a cache (export/cache.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cyclepose_deploy.runtime.api import Segmenter as RuntimeSegmenter
from cyclepose_deploy.runtime.run.options import InferOptions


class Segmenter(RuntimeSegmenter):
    """runtime.api.Segmenter; `model` may also be `nuclei`, `synth`, a CyclePose `.pt` or a Cellpose 3
    model file (exported on first use, then loaded from the cache: cyclepose_deploy.export.cache)."""

    def __init__(
        self, model: str | Path = "export", options: InferOptions | None = None, **settings: Any
    ) -> None:
        super().__init__(resolve(model), options, **settings)


def resolve(model: str | Path) -> str | Path:
    """An export folder / .onnx / engine as given; a model name or checkpoint as its cached export."""
    from cyclepose_deploy.export.cache import exported, needs_export

    return exported(model) if needs_export(model) else model
