"""Bad input, whatever the command: one line `error: ...` naming the problem, exit code 2, no traceback,
and nothing half-written (no output, no temporary file left behind). Grouped by what is wrong: options;
images; models and manifests; outputs and folders; schedulers. Planted symlinks are never followed, and
manifests are validated as a whole schema."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tifffile

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model.manifest import load_manifest
from cyclepose_deploy.synth.slide import make_slide


@pytest.fixture
def onnx() -> ModuleType:
    """The onnx package, for the tests that build or rewrite a model with it (skips where missing)."""
    pytest.importorskip("onnxruntime")
    return pytest.importorskip("onnx")


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    """A 64x64 uint16 TIFF of noise."""
    image = (np.random.default_rng(0).random((64, 64)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", image)
    return tmp_path / "s.tif"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Label images for `cyclepose eval`: good ground truth, and predictions that are wrong each its way."""
    labels = np.zeros((32, 32), np.uint16)
    labels[4:12, 4:12] = 1
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    tifffile.imwrite(tmp_path / "small.tif", labels[:16])
    tifffile.imwrite(tmp_path / "float.tif", labels.astype(np.float32))
    tifffile.imwrite(tmp_path / "negative.tif", -labels.astype(np.int32))
    (tmp_path / "text.tif").write_text("not a tiff")
    return tmp_path


# options -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--size", "0"], "too small"),
        (["--size", "-5"], "too small"),
        ([], "slide size is missing"),
        (["--height", "64"], "slide size is missing"),
        (["--size", "64", "--diameter", "30-10"], "--diameter"),
        (["--size", "64", "--diameter", "abc"], "--diameter"),
        (["--size", "64", "--pixel-size", "0"], "--pixel-size"),
        (["--size", "2000000"], "must be a whole number from 16 to 65536"),
    ],
)
def test_synth_bad_arguments(
    tmp_path: Path,
    extra: list[str],
    expect: str,
    invoke_streams: Callable,
    error_line: Callable,
    no_leftovers: Callable,
) -> None:
    args = ["synth", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "gt.tif"), *extra]
    with no_leftovers(tmp_path):
        assert expect in error_line(*invoke_streams(*args))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--diameter", "nan", "--diameter nan must be a number from 1 to 2000 px"),
        ("--diameter", "1.5", r"rescale the image by .*accepts"),
        ("--diameter-um", "inf", "--diameter-um inf must be a number from 0.05 to 1000 µm"),
        ("--cellprob-threshold", "nan", "--cellprob-threshold nan must be a number from -12 to 12"),
        ("--flow-threshold", "-1", "--flow-threshold -1.0 must be a number from 0 to 10"),
        ("--series", "-1", "--series -1 must be a whole number from 0"),
        ("--pixel-size", "0,1", "--pixel-size"),
    ],
)
def test_absurd_option_values_are_refused(
    tmp_path: Path,
    slide: Path,
    tiny_onnx: Callable,
    option: str,
    value: str,
    message: str,
    invoke: Callable,
    error_line: Callable,
) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif", option, value))
    assert re.search(message, line), line
    assert not (tmp_path / "l.tif").exists()


def test_bad_options(
    infer_data: dict[str, Path],
    tmp_path: Path,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    slide, net, out = infer_data["slide"], infer_data["net"], tmp_path / "l.tif"
    assert "multiple of 16" in error_line(*invoke("infer", slide, "--model", net, "-o", out, "--tile", 100))
    assert "--diameter" in error_line(*invoke("infer", slide, "--model", net, "-o", out, "--diameter", -3))
    assert "not found" in error_line(*invoke("infer", slide, "--model", tmp_path / "m.onnx", "-o", out))
    (tmp_path / "a-file").write_text("")
    under_a_file = tmp_path / "a-file" / "sub" / "l.tif"  # a missing folder is created; this one cannot be
    line = error_line(*invoke("infer", slide, "--model", net, "-o", under_a_file))
    assert "cannot create the output folder" in line
    (tmp_path / "a-file").unlink()
    # --engine is the old name of --model, kept as an alias
    assert "differ" in error_line(*invoke("infer", slide, "--engine", net, "-o", slide))
    assert leftovers(tmp_path) == []


def test_python_api_pixel_size_is_validated(net: Path) -> None:
    from cyclepose_deploy import Segmenter

    image, _ = make_slide(128, 128, 5)
    with Segmenter(net) as seg:
        for bad in ((0, 0), (-1, 1), (0.5,), "a"):
            with pytest.raises(UserError, match="pixel_size"):
                seg.segment(image, pixel_size=bad)


# images ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pred", "expect"),
    [
        ("missing.tif", "not found"),
        ("text.tif", "not a readable TIFF"),
        ("small.tif", "differs"),
        ("float.tif", "not integer labels"),
        ("negative.tif", "negative labels"),
    ],
)
def test_eval_bad_prediction(
    files: Path,
    pred: str,
    expect: str,
    invoke_streams: Callable,
    error_line: Callable,
    no_leftovers: Callable,
) -> None:
    args = ["eval", str(files / pred), str(files / "gt.tif"), "--json", str(files / "out.json")]
    with no_leftovers(files):
        assert expect in error_line(*invoke_streams(*args))


def test_eval_truncated_and_oversized_tiffs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, invoke: Callable, error_line: Callable
) -> None:
    labels = np.random.default_rng(0).integers(0, 5, (256, 256)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", labels, compression="zlib")
    data = (tmp_path / "g.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    line = error_line(*invoke("eval", tmp_path / "cut.tif", tmp_path / "g.tif"))
    assert "prediction file" in line and "cut.tif" in line
    # a 128 KiB image
    monkeypatch.setattr("cyclepose_deploy.runtime.source.formats.MAX_WHOLE_BYTES", 64 * 1024)
    line = error_line(*invoke("eval", tmp_path / "g.tif", tmp_path / "g.tif"))
    assert "claims 256x256 px" in line


def test_missing_and_corrupt_slide(
    infer_data: dict[str, Path],
    tmp_path: Path,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    net, out = infer_data["net"], tmp_path / "l.tif"
    assert "not found" in error_line(*invoke("infer", tmp_path / "nope.tif", "--model", net, "-o", out))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    assert "cannot read" in error_line(*invoke("infer", tmp_path / "bad.tif", "--model", net, "-o", out))
    assert leftovers(tmp_path) == ["bad.tif"]


def test_truncated_tile_data(
    infer_data: dict[str, Path],
    tmp_path: Path,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    blob = infer_data["slide"].read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[: len(blob) // 2])
    line = error_line(
        *invoke("infer", tmp_path / "cut.tif", "--model", infer_data["net"], "-o", tmp_path / "l.tif")
    )
    assert "cut.tif" in line, line
    assert leftovers(tmp_path) == ["cut.tif"]


def test_bad_dimensions_and_channel(
    infer_data: dict[str, Path],
    tmp_path: Path,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    net, out = infer_data["net"], tmp_path / "l.tif"
    tifffile.imwrite(
        tmp_path / "z.ome.tif", np.zeros((3, 32, 32), np.uint16), ome=True, metadata={"axes": "ZYX"}
    )
    assert "2D" in error_line(*invoke("infer", tmp_path / "z.ome.tif", "--model", net, "-o", out))
    tifffile.imwrite(
        tmp_path / "c.ome.tif", np.zeros((2, 32, 32), np.uint16), ome=True, metadata={"axes": "CYX"}
    )
    line = error_line(*invoke("infer", tmp_path / "c.ome.tif", "--model", net, "-o", out, "--channel", 2))
    assert "--channel 2" in line and "0..1" in line, line
    assert leftovers(tmp_path) == ["c.ome.tif", "z.ome.tif"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_slide_is_one_line(
    tmp_path: Path, slide: Path, tiny_onnx: Callable, invoke: Callable, error_line: Callable
) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    slide.chmod(0)
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    assert str(slide) in line


def test_permission_denied_is_one_line_for_every_command(
    tmp_path: Path,
    slide: Path,
    tiny_onnx: Callable,
    monkeypatch: pytest.MonkeyPatch,
    invoke: Callable,
    error_line: Callable,
) -> None:
    """As root nothing is unreadable, so the OS error is raised where a file is opened."""
    import builtins

    model = tiny_onnx(tmp_path / "m.onnx")
    real_open = builtins.open

    def deny(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith(("s.tif", "m.onnx", "manifest.json", "labels.tif")):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    for args in (
        ("infer", slide, "--model", model, "-o", tmp_path / "l.tif"),
        ("eval", slide, slide),
    ):
        line = error_line(*invoke(*args))
        assert "Permission denied" in line, line


# models and manifests ------------------------------------------------------------------------------------
def _graph_model(nodes: list, inits: list, in_shape: list, out_shape: list, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)
    out = helper.make_tensor_value_info("flows", TensorProto.FLOAT, out_shape)
    model = helper.make_model(
        helper.make_graph(nodes, "bad", [inp], [out], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _conv(path: Path, out_channels: int, stride: int = 1, in_shape: list | None = None) -> Path:
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((out_channels, 1, 1, 1), np.float32), "w")
    node = helper.make_node("Conv", ["image", "w"], ["flows"], strides=[stride, stride])
    return _graph_model(
        [node], [weight], in_shape or ["N", 1, "H", "W"], ["N", out_channels, "H2", "W2"], path
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: _conv(p, 2), "outputs 2 channels"),
        (lambda p: _conv(p, 3, stride=2), r"maps a \(1, 1, 64, 64\) input to \(1, 3, 32, 32\)"),
        (lambda p: _conv(p, 3, in_shape=[1, 1, 256, 256]), "fixed input size"),
    ],
)
@pytest.mark.usefixtures("onnx")
def test_models_that_do_not_fit_are_refused_before_slide_work(
    tmp_path: Path,
    slide: Path,
    build: Callable,
    message: str,
    invoke: Callable,
    error_line: Callable,
) -> None:
    model = build(tmp_path / "bad.onnx")
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    assert re.search(message, line), line
    assert not (tmp_path / "l.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_external_data_models_are_refused(
    tmp_path: Path,
    slide: Path,
    onnx: ModuleType,
    tiny_onnx: Callable,
    invoke: Callable,
    error_line: Callable,
) -> None:
    model = onnx.load(str(tiny_onnx(tmp_path / "m.onnx")))
    (tmp_path / "ext").mkdir()
    onnx.save(
        model,
        str(tmp_path / "ext" / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "ext" / "weights.bin").exists()
    line = error_line(
        *invoke("infer", slide, "--model", tmp_path / "ext" / "m.onnx", "-o", tmp_path / "l.tif")
    )
    assert "external data" in line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(size_multiple="16"), "size_multiple: Input should be a valid integer"),
        (lambda d: d.update(diameter=24), "diameter: Input should be a valid"),
        (lambda d: d.update(flow_scale=None), "flow_scale: Input should be a valid number"),
        (lambda d: d["artifacts"][0].update(sha256=5), "artifacts.0.sha256: Input should be a valid string"),
        (lambda d: d.update(diameter=[30.0, 10.0]), "need min <= max"),
        (lambda d: d.update(normalization={"lower": 99.0, "upper": 1.0}), "lower 99 >= upper 1"),
        (
            lambda d: d.update(normalization={"lower": 1.0, "upper": 500.0}),
            "normalization_upper 500.0 must be a number from 0",
        ),
        (lambda d: d.update(max_extent=1e9), "max_extent 1000000000.0 must be a number from 1 to 4000 px"),
        (lambda d: d.update(diameter=[0.0, 30.0]), "diameter 0.0 must be a number from 1"),
        (lambda d: d.update(channels=True), "channels: Input should be a valid integer"),
    ],
)
def test_wrongly_typed_manifests_are_refused(
    tmp_path: Path, tiny_export: Callable, edit: Callable, message: str
) -> None:
    folder = tiny_export(tmp_path / "export")
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        load_manifest(folder)


def test_deeply_nested_manifest_is_one_line(tmp_path: Path, tiny_export: Callable) -> None:
    folder = tiny_export(tmp_path / "export")
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply|not valid JSON"):
        load_manifest(folder)


def test_a_model_with_nan_outputs_is_refused_at_load(
    tmp_path: Path, slide: Path, onnx: ModuleType, invoke: Callable, error_line: Callable
) -> None:
    """Outputs NaN: refused when the model loads, not a run that silently finds nothing."""
    from onnx import helper, numpy_helper

    nan = numpy_helper.from_array(np.full((3, 1, 1, 1), np.nan, np.float32), "w")
    node = helper.make_node("Conv", ["image", "w"], ["flows"])
    model = _graph_model([node], [nan], ["N", 1, "H", "W"], ["N", 3, "H", "W"], tmp_path / "nan.onnx")
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    assert "NaN or infinite outputs" in line and not (tmp_path / "l.tif").exists()


def test_a_model_giving_nan_on_some_tile_of_a_run_is_named_with_the_tile(
    tmp_path: Path, onnx: ModuleType, invoke: Callable, error_line: Callable
) -> None:
    """A model that passes the load probe but overflows on part of a slide (outputs sqrt(1.5 - x):
    NaN where the normalised image is above 1.5) ends in one line naming the tile, and no labels:
    never background in silence."""
    from onnx import helper, numpy_helper

    ones = numpy_helper.from_array(np.ones((3, 1, 1, 1), np.float32), "w")
    limit = numpy_helper.from_array(np.array(1.5, np.float32), "limit")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["x"]),
        helper.make_node("Sub", ["limit", "x"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["flows"]),
    ]
    model = _graph_model(nodes, [ones, limit], ["N", 1, "H", "W"], ["N", 3, "H", "W"], tmp_path / "m.onnx")
    from cyclepose_deploy.synth.slide import make_slide

    image, _ = make_slide(300, 300, 4)
    image = image.astype(np.float32)
    image[250:253, 200:203] = 50 * image.max()  # a hot spot: normalised far above 1.5
    tifffile.imwrite(tmp_path / "s.tif", image)
    out = tmp_path / "l.tif"
    line = error_line(*invoke("infer", tmp_path / "s.tif", "--model", model, "-o", out, "--diameter", 30))
    assert "NaN or infinite outputs on the tile at y=" in line and "fp32" in line, line
    assert not out.exists()


@pytest.mark.parametrize("factor", [1e298, 1e-45])
def test_float64_intensities_float32_cannot_hold_are_refused(
    net: Path, tmp_path: Path, invoke: Callable, error_line: Callable, factor: float
) -> None:
    """1e300 would become inf and 1e-45 zero in float32, both an empty result: one line instead, from
    a file and from the Python API."""
    from cyclepose_deploy.api import Segmenter
    from cyclepose_deploy.synth.slide import make_slide

    image = make_slide(128, 128, 4)[0].astype(np.float64) * factor
    tifffile.imwrite(tmp_path / "s.tif", image)
    out = tmp_path / "l.tif"
    line = error_line(*invoke("infer", tmp_path / "s.tif", "--model", net, "-o", out, "--diameter", 20))
    assert "outside the float32 range" in line and "rescale" in line and not out.exists()
    with pytest.raises(UserError, match="outside the float32 range"):
        Segmenter(net, diameter=20).segment(image)


def test_manifest_hash_mismatch(
    infer_data: dict[str, Path],
    tmp_path: Path,
    write_manifest: Callable,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    write_manifest(export, infer_data["net"], sha="f" * 64)
    slide, out = infer_data["slide"], tmp_path / "l.tif"
    assert "sha256" in error_line(*invoke("infer", slide, "--model", export, "-o", out))
    assert "sha256" in error_line(*invoke("infer", slide, "--model", export / "model.onnx", "-o", out))
    assert leftovers(tmp_path) == ["export"]


def test_engine_built_for_another_gpu(
    infer_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_export: Callable,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    """The runner compares the manifest's TensorRT version and GPU with this machine's before loading."""
    from types import SimpleNamespace

    from cyclepose_deploy.runtime.backends import tensorrt as trt_backend
    from cyclepose_deploy.runtime.model import artifacts

    monkeypatch.setattr(artifacts, "gpu_tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_backend, "trt", SimpleNamespace(__version__="10.9.0"))
    monkeypatch.setattr(trt_backend.cuda, "device_properties", lambda device=0: ("NVIDIA H100", "9.0"))
    export = engine_export(tmp_path / "export", infer_data["net"])
    line = error_line(*invoke("infer", infer_data["slide"], "--model", export, "-o", tmp_path / "l.tif"))
    for fragment in ("built for TensorRT 10.3.0", "Orin", "rebuild"):
        assert fragment in line, line
    assert leftovers(tmp_path) == ["export"]


def test_export_folder_artifacts_resolve_inside_the_folder_not_the_cwd(
    tmp_path: Path,
    tiny_export: Callable,
    slide: Path,
    monkeypatch: pytest.MonkeyPatch,
    invoke: Callable,
) -> None:
    folder = tiny_export(tmp_path / "export")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "model.int8.onnx").write_bytes(b"not the model")
    monkeypatch.chdir(decoy)
    code, text = invoke("infer", slide, "--model", folder, "-o", tmp_path / "l.tif")
    assert code == 0, text
    assert "model.int8.onnx" in text and tifffile.imread(tmp_path / "l.tif").shape == (64, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["synth", "X", "--size", "1000000"], "--size 1000000 must be a whole number from 16 to 65536 px"),
        (["synth", "X", "--size", "64", "--seed", "-1"], "--seed -1 must be a whole number from 0"),
        (
            ["bench", "--model", "M", "--tile", "100000"],
            "--tile 100000 must be a whole number from 16 to 2048",
        ),
        (
            ["bench", "--model", "M", "--batch", "100000"],
            "--batch 100000 must be a whole number from 1 to 256",
        ),
        (["bench", "--model", "M", "--batch", "64", "--tile", "1024"], "fit in memory"),
        (["export", "C", "-o", "E", "--threads", "-4"], "--threads -4 must be a whole number from 1"),
        (["export", "C", "-o", "E", "--threads", "0"], "--threads 0 must be a whole number from 1"),
        (["export", "C", "-o", "E", "--opset", "nan"], "--opset must be a whole number from 13 to 21"),
        (["infer", "S", "--model", "M", "-o", "L", "--threads", "100000"], "--threads 100000 must be"),
        (["infer", "S", "--model", "M", "-o", "L", "--scheduler", "local:99999"], "worker count must be"),
        (["infer", "S", "--model", "M", "-o", "L", "--tile", "nan"], "--tile must be a whole number"),
        (["infer", "S", "--model", "M", "-o", "L", "--diameter", "1,5"], "--diameter must be a number"),
        (
            ["infer", "S", "--model", "M", "-o", "L", "--norm-range", "1,2", "--norm-percentiles", "1,99"],
            "pass one",
        ),
        (["bench", "--model", "M", "--iters", "0"], "--iters must be a whole number from 1"),
    ],
)
def test_every_number_has_a_declared_range(
    tmp_path: Path,
    tiny_export: Callable,
    args: list[str],
    message: str,
    invoke: Callable,
    error_line: Callable,
) -> None:
    """One declared range per value (cyclepose_deploy.limits), checked before any work, also where the
    option parser rejects a value first; upper bounds tied to the machine (threads, memory)."""
    folder = tiny_export(tmp_path / "export")
    (tmp_path / "s.tif").write_bytes(b"")
    names = {
        "X": tmp_path / "x.tif",
        "M": folder,
        "C": "synth",
        "E": tmp_path / "e",
        "S": tmp_path / "s.tif",
        "L": tmp_path / "l.tif",
    }
    line = error_line(*invoke(*[names.get(a, a) for a in args]))
    assert message in line, line
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "e").exists()


def test_training_refuses_before_it_starts_what_export_would_refuse(
    tmp_path: Path, invoke: Callable, error_line: Callable
) -> None:
    image = (np.random.default_rng(0).random((64, 64)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "i.tif", image)
    base = ["train", "--images", tmp_path / "i.tif", "--out", tmp_path / "r.pt", "--steps", 1]
    assert "--widths" in error_line(*invoke(*base, "--widths", "16"))
    assert "--seed -1 must be" in error_line(*invoke(*base, "--seed", -1))
    assert "--tile 1000 must be" in error_line(*invoke(*base, "--tile", 1000))
    assert "at most the synthetic canvas" in error_line(*invoke(*base, "--tile", 512))
    assert "smaller than the tile" in error_line(*invoke(*base, "--tile", 256, "--no-rescale"))
    assert not (tmp_path / "r.pt").exists()


def test_export_refuses_a_checkpoint_with_a_nan_diameter(
    tmp_path: Path, invoke: Callable, error_line: Callable
) -> None:
    torch = pytest.importorskip("torch")
    from cyclepose_deploy.nets.segmenter import Segmenter
    from cyclepose_deploy.train.checkpoint import save_checkpoint

    net = Segmenter(1, [8, 16, 32, 64], 20.0)
    config = {
        "in_channels": 1,
        "widths": [8, 16, 32, 64],
        "diameter": [float("nan"), 30.0],
        "diam_mean": 20.0,
    }
    save_checkpoint(tmp_path / "m.pt", {"config": config, "S": net.state_dict(), "step": torch.tensor(0)})
    line = error_line(*invoke("export", tmp_path / "m.pt", "-o", tmp_path / "e", "--precision", "fp32"))
    assert "diameter nan must be a number" in line and not (tmp_path / "e").exists()


def test_special_files_are_named_as_what_they_are(
    tmp_path: Path, tiny_onnx: Callable, invoke: Callable, error_line: Callable
) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    os.mkfifo(tmp_path / "fifo.tif")
    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    cases = {"fifo.tif": "is a FIFO", "a.tif": "symbolic link that loops", "fake.png": "cannot decode"}
    for name, message in cases.items():
        line = error_line(*invoke("infer", tmp_path / name, "--model", model, "-o", tmp_path / "l.tif"))
        assert message in line and len(line) < 400, line
    assert "character device" in error_line(
        *invoke("infer", "/dev/null", "--model", model, "-o", tmp_path / "l.tif")
    )


# outputs and folders -----------------------------------------------------------------------------------
def test_eval_json_in_missing_folder(
    files: Path, invoke_streams: Callable, error_line: Callable, no_leftovers: Callable
) -> None:
    args = ["eval", str(files / "gt.tif"), str(files / "gt.tif"), "--json", str(files / "no" / "r.json")]
    with no_leftovers(files):
        assert "does not exist" in error_line(*invoke_streams(*args))


def test_synth_bad_output_paths(
    tmp_path: Path, invoke_streams: Callable, error_line: Callable, no_leftovers: Callable
) -> None:
    same = str(tmp_path / "s.tif")
    missing = str(tmp_path / "nowhere" / "s.tif")
    for args, expect in (
        (["synth", str(tmp_path / "s.png"), "--size", "64"], ".tif"),
        (["synth", same, "--size", "64", "--labels", same], "same file"),
        (["synth", missing, "--size", "64"], "does not exist"),
    ):
        with no_leftovers(tmp_path):
            assert expect in error_line(*invoke_streams(*args))


def test_existing_output_needs_overwrite_and_folders_are_refused(
    net: Path, tmp_path: Path, invoke: Callable, error_line: Callable
) -> None:
    image, _ = make_slide(128, 128, 5)
    tifffile.imwrite(tmp_path / "s.tif", image)

    def infer(out: Path, *extra: object) -> tuple[int, str]:
        summary = ("--summary-json", out.with_suffix(".json"))
        return invoke("infer", tmp_path / "s.tif", "--model", net, "-o", out, *summary, *extra)

    (tmp_path / "l.tif").write_bytes(b"keep")
    line = error_line(*infer(tmp_path / "l.tif"))
    assert "already exists" in line and "--overwrite" in line
    assert (tmp_path / "l.tif").read_bytes() == b"keep"
    code, text = infer(tmp_path / "l.tif", "--overwrite")
    assert code == 0 and tifffile.imread(tmp_path / "l.tif").shape == (128, 128), text
    assert json.loads((tmp_path / "l.json").read_text())
    (tmp_path / "dir.tif").mkdir()
    line = error_line(*infer(tmp_path / "dir.tif"))
    assert "is a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.bin"
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old predictable names
        (tmp_path / f".out.bin.partial-{pid}").symlink_to(victim)
    with atomic_path(out) as temp:
        assert not temp.is_symlink() and temp.parent == tmp_path
        temp.write_bytes(b"result")
    assert out.read_bytes() == b"result" and victim.read_text() == "precious"


def test_output_that_is_a_symlink_is_replaced_not_followed(
    tmp_path: Path, slide: Path, tiny_onnx: Callable, invoke: Callable, error_line: Callable
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "l.tif").symlink_to(victim)
    model = tiny_onnx(tmp_path / "m.onnx")
    assert "already exists" in error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    code, text = invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif", "--overwrite")
    assert code == 0, text
    assert victim.read_text() == "precious" and not (tmp_path / "l.tif").is_symlink()


def test_leftovers_of_killed_runs_are_swept(
    tmp_path: Path, slide: Path, tiny_onnx: Callable, invoke: Callable
) -> None:
    import subprocess

    from cyclepose_deploy.atomic import _host

    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID that no longer runs
    here = _host()
    old = [
        tmp_path / f".l.tif.{dead.pid}@{here}.abc123.partial",
        tmp_path / f".cyclepose-{dead.pid}@{here}-xyz",
    ]
    old[0].write_bytes(b"half")
    old[1].mkdir()
    (old[1] / "ids.npy").write_bytes(b"x")
    elsewhere = tmp_path / f".o.csv.{dead.pid}@ffffff.def456.partial"  # another machine's: only reported
    elsewhere.write_bytes(b"half")
    mine = tmp_path / f".x.tif.{os.getpid()}@{here}.ghi789.partial"  # a live process's
    mine.write_bytes(b"mine")
    code, text = invoke("infer", slide, "--model", tiny_onnx(tmp_path / "m.onnx"), "-o", tmp_path / "l.tif")
    assert code == 0, text
    flat = " ".join(text.split())
    assert "removed 2 leftover(s)" in flat and "1 leftover(s) of runs on other machines" in flat
    assert not any(p.exists() for p in old) and elsewhere.exists() and mine.exists()


def test_outputs_get_the_usual_permissions(
    tmp_path: Path, slide: Path, tiny_onnx: Callable, invoke: Callable
) -> None:
    old = os.umask(0o022)
    try:
        code, text = invoke(
            "infer",
            slide,
            "--model",
            tiny_onnx(tmp_path / "m.onnx"),
            "-o",
            tmp_path / "l.tif",
            "--objects",
            tmp_path / "o.csv",
        )
    finally:
        os.umask(old)
    assert code == 0, text
    assert (tmp_path / "l.tif").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "o.csv").stat().st_mode & 0o777 == 0o644


def test_full_disk_leaves_nothing(
    infer_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    from cyclepose_deploy.runtime.outputs import tiff

    monkeypatch.setattr(tiff, "tiles_of", lambda *a, **k: full())
    out = tmp_path / "out"
    out.mkdir()
    args = ("infer", infer_data["slide"], "--model", infer_data["net"], "-o", out / "l.tif")
    code, text = invoke(*args, "--objects", out / "o.csv", "--tile", 128)
    line = error_line(code, text)
    assert "No space left" in line and "l.tif" in line, line
    # no half-written output; the finished chunks are kept in the run folder, and once there is space
    # again --resume writes the outputs without running the network again
    assert leftovers(out) == ["l.tif.run"]
    assert "--resume" in text
    monkeypatch.undo()
    code, text = invoke(*args, "--objects", out / "o.csv", "--tile", 128, "--resume")
    assert code == 0, text
    assert "network tiles 0" in text
    assert leftovers(out) == ["l.tif", "o.csv"]


def test_full_disk_during_chunks(
    infer_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    from cyclepose_deploy.runtime.run.scratch import ScratchStore

    def full(self: object, result: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ScratchStore, "write", full)
    code, text = invoke(
        "infer", infer_data["slide"], "--model", infer_data["net"], "-o", tmp_path / "l.tif", "--tile", 128
    )
    assert "No space left" in error_line(code, text)
    assert leftovers(tmp_path) == []


# schedulers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("local:0", "a whole number from 1"),
        ("local:x", "a whole number from 1"),
        ("cluster", "scheduler address"),
    ],
)
def test_bad_scheduler_is_one_line(
    scaleout_data: dict[str, Path],
    tmp_path: Path,
    value: str,
    message: str,
    invoke: Callable,
    leftovers: Callable,
) -> None:
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    data = scaleout_data
    code, text = invoke(
        "infer", data["slide"], "--model", data["net"], "-o", tmp_path / "l.tif", "--scheduler", value
    )
    assert code == 2 and message in text and "Traceback" not in text
    assert leftovers(tmp_path) == []


def test_unreachable_scheduler_is_one_line(
    scaleout_data: dict[str, Path], tmp_path: Path, invoke: Callable, leftovers: Callable
) -> None:
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    data = scaleout_data
    code, text = invoke(
        "infer",
        data["slide"],
        "--model",
        data["net"],
        "-o",
        tmp_path / "l.tif",
        "--tile",
        "128",
        "--diameter",
        "20",
        "--scheduler",
        "tcp://127.0.0.1:9",
    )
    assert code == 2 and "cannot reach the Dask scheduler" in text and "Traceback" not in text
    assert leftovers(tmp_path) == []
