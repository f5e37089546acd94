"""The napari plugin (cyclepose_deploy/napari/). Its work (napari.segment) is tested without napari: an
image layer's data -> Labels layer data and kwargs, the same labels as one Segmenter.segment call, steps
that stop between them, one-line errors. The widget is tested where napari and a Qt binding import, headless
(Qt's offscreen platform with napari's ViewerModel, which needs no OpenGL), synchronously and in its
worker thread; a full napari.Viewer needs OpenGL and runs only with a display (xvfb-run)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.napari.segment import (
    MODEL_ENV,
    Segmenters,
    Settings,
    default_model,
    model_path,
    segment_layer_data,
    segment_steps,
)

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

REPO = Path(__file__).resolve().parents[1]
GUI_MODULES = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    """A 256 x 320 synthetic fluorescence field (uint16)."""
    from cyclepose_deploy.synth.slide import make_slide

    image, _ = make_slide(256, 320, 3)
    return image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, nuclei_net: Callable[..., Path]) -> Path:
    return nuclei_net(tmp_path_factory.mktemp("napari") / "nuclei.onnx")


# the work, without napari ------------------------------------------------------------------------------
def test_layer_data_is_uint32_labels_with_the_image_scale_and_diameter(
    field: np.ndarray, model: Path
) -> None:
    labels, kwargs = segment_layer_data(
        field, model=model, name="DAPI", scale=(0.5, 0.25), translate=(10, -4)
    )
    assert labels.dtype == np.uint32 and labels.shape == field.shape
    assert kwargs["name"] == "DAPI nuclei"
    assert kwargs["scale"] == (0.5, 0.25) and kwargs["translate"] == (10.0, -4.0)
    meta = kwargs["metadata"]
    assert meta["objects"] == len(np.unique(labels)) - 1 > 10
    assert meta["diameter"] > 0 and meta["diameter_method"] != "given"
    assert meta["settings"]["diameter"] == 0.0 and meta["settings"]["tta"] is False
    assert meta["cyclepose"]["diameter"]["px"] == pytest.approx(meta["diameter"])


def test_steps_give_the_labels_of_one_segment_call(field: np.ndarray, model: Path) -> None:
    """Estimate, then segment at that diameter == Segmenter.segment with the automatic diameter; a
    given diameter is used as it is."""
    from cyclepose_deploy import Segmenter

    with Segmenter(model) as seg:
        auto = seg.segment(field)
        given = seg.segment(field, diameter=12.0, flow_threshold=0.0)
    cache = Segmenters()
    labels, kwargs = segment_layer_data(field, model=model, segmenters=cache)
    assert np.array_equal(labels, auto.labels)
    assert auto.diameter is not None and kwargs["metadata"]["diameter"] == auto.diameter.diameter
    labels, kwargs = segment_layer_data(field, model=model, diameter=12, flow_threshold=0, segmenters=cache)
    assert np.array_equal(labels, given.labels)
    assert (kwargs["metadata"]["diameter"], kwargs["metadata"]["diameter_method"]) == (12.0, "given")
    cache.close()


def test_steps_report_progress_and_stop_between_steps(field: np.ndarray, model: Path) -> None:
    cache = Segmenters()
    steps = segment_steps(field, Settings(model), segmenters=cache)
    first = next(steps)
    assert (first.index, first.total) == (1, 3) and "loading model" in first.text
    steps.close()  # cancel before the model loads: nothing loaded
    assert cache.segmenter is None
    steps = segment_steps(field, Settings(model), segmenters=cache)
    assert [next(steps).index, next(steps).index] == [1, 2]
    steps.close()  # cancel after the load: the model is kept for the next run, nothing segmented
    assert cache.segmenter is not None
    given = segment_steps(field, Settings(model, diameter=15), segmenters=cache)
    assert [(s.index, s.total) for s in given] == [(1, 2), (2, 2)]
    cache.close()


def test_multiscale_layers_are_segmented_at_full_resolution(field: np.ndarray, model: Path) -> None:
    pyramid = [field, field[::2, ::2]]
    labels, _ = segment_layer_data(pyramid, model=model, diameter=15, multiscale=True)
    assert labels.shape == field.shape


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        (np.zeros((3, 64, 64), np.uint16), {}, r"has 3 dimensions \(3, 64, 64\).*pick a 2-D"),
        (np.zeros((64, 64, 3), np.uint8), {"rgb": True}, r"is RGB.*Split RGB"),
        (np.zeros((0, 64), np.uint16), {}, "is empty"),
        (np.zeros((64, 64), np.uint16), {"model": None}, r"no model chosen.*CYCLEPOSE_MODEL"),
        (np.zeros((64, 64), np.uint16), {"model": " "}, "no model chosen"),
        (np.zeros((64, 64), np.uint16), {"model": "/no/such/export"}, "/no/such/export not found"),
        (np.zeros((64, 64), np.uint16), {"diameter": 0.5}, "diameter 0.5 must be"),
    ],
)
def test_bad_layers_models_and_settings_are_one_line_user_errors(
    model: Path, data: np.ndarray, options: dict[str, Any], expected: str
) -> None:
    options = {"model": model, **options}
    with pytest.raises(UserError, match=expected) as caught:
        segment_layer_data(data, name="layer", **options)
    assert len(str(caught.value).splitlines()) == 1


def test_the_model_field_starts_from_memory_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model(None) == ""
    monkeypatch.setenv(MODEL_ENV, "/models/export")
    assert default_model(None) == "/models/export"
    assert default_model(str(export)) == str(export)
    assert default_model(str(tmp_path / "gone")) == "/models/export"  # a remembered path that went away
    assert default_model("nuclei") == "nuclei"  # a shipped model's name
    assert model_path(export / "manifest.json") == export
    assert model_path("~/export") == Path.home() / "export"


PROBE = f"""
import sys
import cyclepose_deploy, cyclepose_deploy.cli, cyclepose_deploy.napari, cyclepose_deploy.napari.segment
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {GUI_MODULES!r})
assert not loaded, loaded
"""


def test_napari_is_imported_only_by_the_widget() -> None:
    """`import cyclepose_deploy` (and the CLI, and the plugin's work) load no napari, magicgui or Qt, and no
    module outside cyclepose_deploy/napari/ imports them (widget.py is the only one inside that does)."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    importers = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "cyclepose_deploy").rglob("*.py")
        if _imports_gui(path)
    )
    assert importers == ["cyclepose_deploy/napari/widget.py"]


def _imports_gui(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] in GUI_MODULES for name in names):
            return True
    return False


def test_the_npe2_manifest_names_the_widget() -> None:
    npe2 = pytest.importorskip(
        "npe2", reason="npe2 comes with napari: pip install 'cyclepose-deploy[napari]'"
    )
    manifest = npe2.PluginManifest.from_file(REPO / "cyclepose_deploy" / "napari" / "napari.yaml")
    assert manifest.name == "cyclepose-deploy"
    (command,) = manifest.contributions.commands
    (widget,) = manifest.contributions.widgets
    assert widget.command == command.id
    assert command.python_name == "cyclepose_deploy.napari.widget:SegmentWidget"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'cyclepose-deploy = "cyclepose_deploy.napari:napari.yaml"' in pyproject
    assert '"napari/napari.yaml"' in pyproject  # shipped as package data


# the widget, where napari and a Qt binding import -------------------------------------------------------
def _needs_napari() -> Any:
    why = "napari with a Qt binding is not installed: pip install 'cyclepose-deploy[napari]' 'napari[pyqt5]'"
    pytest.importorskip("qtpy", reason=why)
    pytest.importorskip("magicgui", reason=why)
    return pytest.importorskip("napari", reason=why)


@pytest.fixture
def widget_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """cyclepose_deploy.napari.widget with its memory in tmp_path and its notifications recorded
    (module.shown)."""
    _needs_napari()
    from cyclepose_deploy.napari import widget

    shown: list[str] = []
    monkeypatch.setattr(widget, "_memory_file", lambda: tmp_path / "memory.json")
    monkeypatch.setattr(widget, "show_error", shown.append)
    monkeypatch.setattr(widget, "shown", shown, raising=False)
    yield widget


def _wait(widget: Any, seconds: float = 120.0) -> None:
    """Let the Qt event loop deliver the worker's signals until the run has finished."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while widget.worker is not None and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    assert widget.worker is None, "the worker did not finish"


def test_widget_adds_a_labels_layer_headless(widget_module: Any, field: np.ndarray, model: Path) -> None:
    from napari.components import ViewerModel
    from napari.layers import Labels

    viewer = ViewerModel()
    viewer.add_image(field, name="DAPI", scale=(0.5, 0.25), translate=(3.0, 7.0))
    widget = widget_module.SegmentWidget(viewer)
    assert widget.image.value is viewer.layers["DAPI"]
    widget.model.value = model
    layer = widget.run_blocking()
    assert isinstance(layer, Labels) and layer.name == "DAPI nuclei"
    assert layer.data.dtype == np.uint32 and layer.data.shape == field.shape
    np.testing.assert_array_equal(layer.scale, viewer.layers["DAPI"].scale)
    np.testing.assert_array_equal(layer.translate, viewer.layers["DAPI"].translate)
    assert layer.metadata["diameter"] > 0
    assert f"diameter {layer.metadata['diameter']:.1f} px" in viewer.status
    assert widget.message.value == viewer.status and widget.run_button.enabled
    assert widget_module._remembered_model() == str(model)
    assert widget_module.shown == []

    widget.diameter.value = 15.0  # a second run replaces the layer's data
    assert widget.run_blocking() is layer and len(viewer.layers) == 2
    assert layer.metadata["diameter_method"] == "given"


def test_widget_errors_are_one_line_notifications(widget_module: Any, model: Path) -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    widget = widget_module.SegmentWidget(viewer)
    widget.model.value = model
    assert widget.run_blocking() is None
    viewer.add_image(np.zeros((2, 32, 32), np.uint16), name="stack")
    widget.run_button.native.click()  # Run: checked before a worker starts
    assert widget.worker is None and widget.run_button.enabled
    assert len(viewer.layers) == 1
    assert widget_module.shown[0].startswith("no image layer")
    assert "'stack' has 3 dimensions" in widget_module.shown[1] and "pick a 2-D" in widget_module.shown[1]
    assert all("\n" not in line for line in widget_module.shown)
    assert widget.message.value.startswith("Error: image layer 'stack'")


def test_widget_runs_in_a_worker_thread_and_cancels(
    widget_module: Any, field: np.ndarray, model: Path
) -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    viewer.add_image(field, name="DAPI")
    widget = widget_module.SegmentWidget(viewer)
    widget.model.value = model
    widget.run()
    assert widget.worker is not None and not widget.run_button.enabled and widget.cancel_button.enabled
    _wait(widget)
    assert "DAPI nuclei" in viewer.layers and widget.progress.value == widget.progress.max
    viewer.layers.remove("DAPI nuclei")

    widget.run()
    widget.cancel_button.native.click()  # the run stops at its next step boundary; nothing is added
    assert widget.cancel_button.text == "Cancelling..."
    _wait(widget)
    assert "DAPI nuclei" not in viewer.layers
    assert widget.message.value.startswith("Cancelled") and widget.run_button.enabled
    assert widget_module.shown == []


def test_widget_docked_in_a_napari_viewer(widget_module: Any, field: np.ndarray, model: Path) -> None:
    """The widget as napari opens it from the Plugins menu (npe2 manifest), in a real Viewer."""
    napari = _needs_napari()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        pytest.skip("napari.Viewer needs OpenGL, which Qt's offscreen platform lacks: run under xvfb-run")
    viewer = napari.Viewer(show=False)
    try:
        viewer.add_image(field, name="DAPI", scale=(0.5, 0.5))
        if _plugin_registered():
            _, widget = viewer.window.add_plugin_dock_widget("cyclepose-deploy", "Segment nuclei")
        else:  # an install from before the entry point existed: `pip install -e .` registers it
            widget = widget_module.SegmentWidget(viewer)
            viewer.window.add_dock_widget(widget)
        assert isinstance(widget, widget_module.SegmentWidget)
        widget.model.value = model
        layer = widget.run_blocking()
        assert layer is not None and layer.data.dtype == np.uint32 and layer.data.shape == field.shape
        np.testing.assert_array_equal(layer.scale, (0.5, 0.5))
    finally:
        viewer.close()


def _plugin_registered() -> bool:
    from npe2 import PluginManager

    try:
        PluginManager.instance().get_manifest("cyclepose-deploy")
    except KeyError:
        return False
    return True
