"""The napari widget's work, without napari: an image layer's pixels and settings -> the data and keyword
arguments of a Labels layer (napari's layer-data tuple without the "labels" tag), so it runs and is
tested where napari is not installed.

    data, kwargs = segment_layer_data(image, model="export/", name="DAPI", scale=(0.5, 0.5))
    viewer.add_labels(data, **kwargs)          # layer "DAPI nuclei", uint32, the image's scale

The work is a generator of steps (`segment_steps`): the widget runs it in a worker thread and can stop
it between steps (load the model, estimate the diameter, segment); a step, once started, runs to its end.
Estimating first and then segmenting at that diameter is what `Segmenter.segment` does in one call (the
same labels; tests/test_napari.py checks it), split so that cancel and progress have a step between.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy import defaults
from cyclepose_deploy.api import Segmenter
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model.manifest import MANIFEST_NAME
from cyclepose_deploy.runtime.run.diameter import DiameterEstimate
from cyclepose_deploy.runtime.run.result import SegmentResult

MODEL_ENV = "CYCLEPOSE_MODEL"  # the model the widget starts with when it remembers none
LAYER_SUFFIX = " nuclei"
MODEL_HINT = (
    "pick an export folder (`cyclepose export` writes one) or an .onnx file, or type a shipped model's "
    f"name (nuclei, synth; exported once, needs torch), or set {MODEL_ENV}"
)


@dataclass(frozen=True)
class Settings:
    """The widget's fields. model: what `Segmenter` takes (an export folder, an .onnx, a TensorRT engine,
    a shipped model name or a checkpoint) or an export's manifest.json;
    diameter: median nucleus diameter in px, 0 = estimated from the image; cellprob_threshold,
    flow_threshold, tta: as `cyclepose infer`'s options of those names."""

    model: str | Path | None
    diameter: float = 0.0
    cellprob_threshold: float = defaults.CELLPROB_THRESHOLD
    flow_threshold: float = defaults.FLOW_THRESHOLD
    tta: bool = False

    def options(self) -> dict[str, Any]:
        """The Segmenter options of one run (the diameter is chosen by the steps)."""
        return {
            "cellprob_threshold": float(self.cellprob_threshold),
            "flow_threshold": float(self.flow_threshold),
            "tta": bool(self.tta),
        }


@dataclass(frozen=True)
class Step:
    """Progress of a run: step `index` (1-based) of `total` is starting; text says what it does."""

    index: int
    total: int
    text: str


def model_path(value: str | Path | None) -> Path:
    """The model to load: a path as typed or picked (~ expanded; a manifest.json means its export
    folder); UserError when none is given."""
    text = "" if value is None else str(value).strip()
    if not text or text == ".":
        raise UserError(f"no model chosen: {MODEL_HINT}")
    path = Path(text).expanduser()
    return path.parent if path.name == MANIFEST_NAME else path


def default_model(remembered: str | None = None) -> str:
    """The model the widget starts with: the one remembered from the last run while it exists (or is a
    name such as nuclei), else $CYCLEPOSE_MODEL as set, else "" (the widget then says what to pick)."""
    if remembered and (os.sep not in remembered or Path(remembered).expanduser().exists()):
        return remembered
    return os.environ.get(MODEL_ENV, "").strip()


def image_plane(data: Any, name: str, *, rgb: bool = False, multiscale: bool = False) -> Any:
    """The 2-D array to segment from an image layer's data (for a multiscale layer, its full-resolution
    level); UserError naming what to pick for an RGB, 3-D or multichannel layer."""
    if multiscale:
        data = data[0]
    shape = tuple(int(s) for s in getattr(data, "shape", ()))
    if rgb:
        raise UserError(
            f"image layer '{name}' is RGB {shape}: pick a single-channel 2-D image layer with the nuclear "
            "stain (right-click the layer > Split RGB, then pick the nuclear channel)"
        )
    if len(shape) != 2:
        raise UserError(
            f"image layer '{name}' has {len(shape)} dimensions {shape}; the widget segments 2-D images: "
            "pick a 2-D single-channel layer (for a stack or channels: right-click the layer > Split "
            "Stack, then pick the nuclear channel or one plane)"
        )
    if min(shape) < 1:
        raise UserError(f"image layer '{name}' is empty {shape}: pick an image with pixels")
    return data


@dataclass
class Segmenters:
    """The loaded model, kept between runs (loading an ONNX Runtime session takes seconds); a run with
    another model path closes it and loads that one."""

    path: Path | None = None
    segmenter: Segmenter | None = field(default=None, repr=False)

    def get(self, path: Path) -> Segmenter:
        if self.segmenter is None or path != self.path:
            self.close()
            segmenter = Segmenter(path)
            segmenter.runner()  # the session is created here, in the loading step, not in the first run
            self.path, self.segmenter = path, segmenter
        return self.segmenter

    def close(self) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
        self.path, self.segmenter = None, None


def segment_steps(
    data: Any,
    settings: Settings,
    *,
    name: str = "image",
    scale: Any = None,
    translate: Any = None,
    rgb: bool = False,
    multiscale: bool = False,
    segmenters: Segmenters | None = None,
) -> Generator[Step, None, tuple[np.ndarray, dict[str, Any]]]:
    """Yield a Step before each part of the work and return (labels, Labels layer kwargs): see
    segment_layer_data. Stopping the generator at a yield (napari's worker.quit) cancels the run."""
    image = image_plane(data, name, rgb=rgb, multiscale=multiscale)
    path = model_path(settings.model)
    segmenters = segmenters if segmenters is not None else Segmenters()
    total = 2 if settings.diameter else 3
    yield Step(1, total, f"loading model {path.name}")
    segmenter = segmenters.get(path)
    options = settings.options()
    notes: list[str] = []
    estimate: DiameterEstimate | None
    if settings.diameter:
        estimate = DiameterEstimate(float(settings.diameter), "given")
    else:
        yield Step(2, total, "estimating the nucleus diameter")
        estimate = segmenter.estimate_diameter(image, warn=notes.append, **options)
    yield Step(total, total, f"segmenting {image.shape[0]} x {image.shape[1]} px")
    diameter = {} if estimate is None else {"diameter": estimate.diameter}
    result = segmenter.segment(image, warn=notes.append, **options, **diameter)
    return labels_layer(result, estimate, settings, name, scale, translate, notes)


def segment_layer_data(
    data: Any,
    *,
    model: str | Path | None,
    name: str = "image",
    scale: Any = None,
    translate: Any = None,
    diameter: float = 0.0,
    cellprob_threshold: float = defaults.CELLPROB_THRESHOLD,
    flow_threshold: float = defaults.FLOW_THRESHOLD,
    tta: bool = False,
    rgb: bool = False,
    multiscale: bool = False,
    segmenters: Segmenters | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment an image layer's data in this thread: (labels (H, W) uint32, kwargs for add_labels:
    name "<name> nuclei", the image's scale and translate, metadata with the diameter used and the run's
    summary). model, diameter (0 = automatic), thresholds and tta: Settings. UserError (one line) for a
    missing model, a layer that is not 2-D, or a bad setting."""
    settings = Settings(model, diameter, cellprob_threshold, flow_threshold, tta)
    steps = segment_steps(
        data,
        settings,
        name=name,
        scale=scale,
        translate=translate,
        rgb=rgb,
        multiscale=multiscale,
        segmenters=segmenters,
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def labels_layer(
    result: SegmentResult,
    estimate: DiameterEstimate | None,
    settings: Settings,
    name: str,
    scale: Any,
    translate: Any,
    notes: list[str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """The Labels layer's data and kwargs from a run. metadata: diameter (px; None for an empty field,
    which keeps the model's scale) and diameter_method ('given' for the widget's value, else how the
    estimate was found), the widget's settings and the run's summary (SegmentResult.to_dict)."""
    assert result.labels is not None
    summary = result.to_dict()
    metadata = {
        "diameter": None if estimate is None else float(estimate.diameter),
        "diameter_method": None if estimate is None else estimate.method,
        "objects": int(result.objects),
        "model": result.model,
        "settings": {
            "model": str(settings.model),
            "diameter": float(settings.diameter),
            **settings.options(),
        },
        "notes": list(notes),
        "cyclepose": summary,
    }
    kwargs: dict[str, Any] = {"name": f"{name}{LAYER_SUFFIX}", "metadata": metadata}
    if scale is not None:
        kwargs["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        kwargs["translate"] = tuple(float(t) for t in translate)
    return result.labels, kwargs


def status_message(kwargs: dict[str, Any], seconds: float | None = None) -> str:
    """One line for the status bar: objects found, the diameter used and how it was found."""
    meta = kwargs["metadata"]
    if meta["diameter"] is None:
        size = "no nucleus-like structure to size: the model's own scale"
    else:
        size = f"diameter {meta['diameter']:.1f} px ({meta['diameter_method']})"
    took = "" if seconds is None else f", {seconds:.1f} s"
    return f"{kwargs['name']}: {meta['objects']} nuclei, {size}{took}"
