"""The dock widget (Plugins > CyclePose nuclei > Segment nuclei), after cellpose-napari and
stardist-napari: pick a model and a 2-D image layer, set the diameter and thresholds, press Run; the
nuclei appear as a Labels layer "<image> nuclei" with the image's scale and translate.

The work (cyclepose_deploy.napari.segment) runs in a napari worker thread, one step at a time: load the
model (kept for the next run), estimate the diameter (when it is 0), segment. Cancel stops the run at the
next step boundary and discards what the current step produces; it cannot interrupt a step that has
started: the model load, the diameter estimate and the segmentation (ONNX Runtime and the flow dynamics)
each run to their end first, so on a large image the segmenting step may take a while to notice Cancel.
Errors appear as one-line napari notifications (and in the widget); the model path of the last
successful run is remembered beside napari's settings file ($NAPARI_CONFIG's folder).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from cyclepose_deploy import limits
from cyclepose_deploy.atomic import write_json_atomic
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.napari.segment import (
    MODEL_HINT,
    Segmenters,
    Settings,
    Step,
    default_model,
    image_plane,
    model_path,
    segment_steps,
    status_message,
)

MEMORY_NAME = "cyclepose-deploy.json"
MODEL_FILTER = "cyclepose model (manifest.json *.onnx *.engine)"
READY = "Ready: pick a 2-D image layer and press Run."
_log = logging.getLogger(__name__)


class SegmentWidget(Container):
    """Segment nuclei in a 2-D image layer with a cyclepose export (module docstring: what runs where,
    and what Cancel can and cannot interrupt). `run_blocking()` does the same work in the calling thread
    (tests, scripts)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.segmenters = Segmenters()
        self.worker: Any = None
        diameter, cellprob, flow = (
            limits.INFER[k] for k in ("diameter", "cellprob_threshold", "flow_threshold")
        )
        defaults = Settings(None)
        self.model = FileEdit(
            label="model",
            mode="r",
            filter=MODEL_FILTER,
            nullable=True,
            value=default_model(_remembered_model()) or None,
            tooltip="An export folder (type it, or select its manifest.json), an .onnx file, a TensorRT "
            "engine in its export folder, or a shipped model's name: nuclei, synth (exported once; "
            "needs torch)",
        )
        self.image = ComboBox(label="image", choices=self._image_layers, tooltip="A 2-D image layer")
        self.diameter = FloatSpinBox(
            label="diameter (px)",
            value=defaults.diameter,
            min=0.0,
            max=diameter.high,
            step=1.0,
            tooltip="Median nucleus diameter in pixels; 0 = estimate it from the image",
        )
        self.cellprob = FloatSpinBox(
            label="cellprob threshold",
            value=defaults.cellprob_threshold,
            min=cellprob.low,
            max=cellprob.high,
            step=0.5,
            tooltip="Pixels whose cell-probability logit exceeds it are foreground: lower finds more",
        )
        self.flow = FloatSpinBox(
            label="flow threshold",
            value=defaults.flow_threshold,
            min=flow.low,
            max=flow.high,
            step=0.1,
            tooltip="Masks whose flow error exceeds it are dropped: higher keeps more; 0 disables the check",
        )
        self.tta = CheckBox(
            text="test-time augmentation",
            value=defaults.tta,
            tooltip="Each tile also runs flipped in y, x and both, the flows averaged (4x the work)",
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.message = Label(value=READY if self.model.value else f"No model: {MODEL_HINT}.")
        self.message.native.setWordWrap(True)
        super().__init__(
            widgets=[
                self.model,
                self.image,
                self.diameter,
                self.cellprob,
                self.flow,
                self.tta,
                buttons,
                self.progress,
                self.message,
            ]
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.reset_choices)

    # what the fields say -------------------------------------------------------------------------------
    def _image_layers(self, *_: Any) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def settings(self) -> Settings:
        return Settings(
            self.model.value, self.diameter.value, self.cellprob.value, self.flow.value, self.tta.value
        )

    def steps(self) -> Generator[Step, None, tuple[Any, dict[str, Any]]]:
        """The run's steps (segment.segment_steps) for the chosen layer; UserError before any work for a
        missing layer or model, or a layer that is not 2-D."""
        layer = self.image.value
        if layer is None:
            raise UserError("no image layer: open an image (File > Open) and pick it under 'image'")
        settings = self.settings()
        model_path(settings.model)
        image_plane(layer.data, layer.name, rgb=layer.rgb, multiscale=layer.multiscale)
        return segment_steps(
            layer.data,
            settings,
            name=layer.name,
            scale=layer.scale,
            translate=layer.translate,
            rgb=layer.rgb,
            multiscale=layer.multiscale,
            segmenters=self.segmenters,
        )

    # running -------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run in a napari worker thread (the Run button)."""
        if self.worker is not None:
            return
        try:
            steps = self.steps()
        except UserError as exc:
            self._on_error(exc)
            return
        self._busy(True)
        worker = create_worker(_relay, steps, _progress={"desc": f"cyclepose: {self.image.value.name}"})
        worker.yielded.connect(self._on_step)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def run_blocking(self) -> Labels | None:
        """The same run in this thread, without Cancel: the Labels layer, or None after an error (which
        is reported as Run reports it)."""
        self._busy(True)
        try:
            steps = self.steps()
            while True:
                self._on_step(next(steps))
        except StopIteration as done:
            return self._on_done(done.value)
        except Exception as exc:  # reported as one line, as the worker's errors are
            self._on_error(exc)
            return None
        finally:
            self._on_finished()

    def cancel(self) -> None:
        """Stop the worker at its next step boundary (module docstring)."""
        if self.worker is None:
            return
        self.worker.quit()
        self.cancel_button.enabled = False
        self.cancel_button.text = "Cancelling..."
        self._say("Cancelling: the current step runs to its end, then the run stops (nothing is added).")

    # the worker's signals (main thread) ----------------------------------------------------------------
    def _on_step(self, step: Step) -> None:
        self.progress.max = step.total
        self.progress.value = step.index - 1
        self._say(f"Step {step.index}/{step.total}: {step.text}...")

    def _on_done(self, result: tuple[Any, dict[str, Any]]) -> Labels:
        data, kwargs = result
        layer = self._labels_layer(data, kwargs)
        self.progress.value = self.progress.max
        message = status_message(kwargs)
        self.viewer.status = message
        self._say(message)
        _remember_model(kwargs["metadata"]["settings"]["model"])
        return layer

    def _labels_layer(self, data: Any, kwargs: dict[str, Any]) -> Labels:
        """Add the Labels layer, or replace the data of the one an earlier run added (same name)."""
        name = kwargs["name"]
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(old, Labels):
            return self.viewer.add_labels(data, **kwargs)
        old.data = data
        old.metadata = kwargs["metadata"]
        old.scale = kwargs.get("scale", old.scale)
        old.translate = kwargs.get("translate", old.translate)
        return old

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, UserError):
            text = str(exc)
        else:  # a bug: the traceback goes to the log, the user sees one line
            _log.error("cyclepose napari widget failed", exc_info=exc)
            text = f"{type(exc).__name__}: {exc}"
        line = (text.strip().splitlines() or [type(exc).__name__])[0]
        self.progress.value = 0
        self._say(f"Error: {line}")
        show_error(line)

    def _on_cancelled(self) -> None:
        self.progress.value = 0
        self._say("Cancelled: no layer was added.")

    def _on_finished(self) -> None:
        self.worker = None
        self._busy(False)

    def _busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
        self.cancel_button.text = "Cancel"

    def _say(self, text: str) -> None:
        self.message.value = text


def _relay(steps: Generator[Step, None, Any]) -> Generator[Step, None, Any]:
    """A generator function for napari's worker (it needs a function, not a generator object)."""
    return (yield from steps)


# the model of the last successful run, beside napari's settings file ---------------------------------
def _memory_file() -> Path | None:
    from napari.settings import get_settings

    config = get_settings().config_path
    return Path(config).parent / MEMORY_NAME if config else None


def _remembered_model() -> str | None:
    path = _memory_file()
    try:
        return str(json.loads(path.read_text())["model"]) if path is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_model(model: str) -> None:
    path = _memory_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"model": model})
    except (OSError, UserError) as exc:  # memory is a convenience: never fail a run for it
        _log.warning("could not remember the model in %s: %s", path, exc)
