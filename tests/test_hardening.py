"""Bad inputs at the runtime's boundary (issue: hardening): each is one `error:` line, exit 2, and nothing
written; planted symlinks are never followed; manifests are validated as a whole schema."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.cli import app
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model.manifest import load_manifest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def error_line(code: int, text: str) -> str:
    assert code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    image = (np.random.default_rng(0).random((64, 64)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", image)
    return tmp_path / "s.tif"


def _graph_model(nodes: list, inits: list, in_shape: list, out_shape: list, path: Path) -> Path:
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


# artifacts whose I/O does not fit --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: _conv(p, 2), "outputs 2 channels"),
        (lambda p: _conv(p, 3, stride=2), r"maps a \(1, 1, 64, 64\) input to \(1, 3, 32, 32\)"),
        (lambda p: _conv(p, 3, in_shape=[1, 1, 256, 256]), "fixed input size"),
    ],
)
def test_models_that_do_not_fit_are_refused_before_slide_work(
    tmp_path: Path, slide: Path, build: Callable, message: str
) -> None:
    model = build(tmp_path / "bad.onnx")
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    assert pytest.importorskip("re").search(message, line), line
    assert not (tmp_path / "l.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_external_data_models_are_refused(tmp_path: Path, slide: Path, tiny_onnx: Callable) -> None:
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


# manifests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(size_multiple="16"), "size_multiple: Input should be a valid integer"),
        (lambda d: d.update(diameter=24), "diameter: Input should be a valid"),
        (lambda d: d.update(flow_scale=None), "flow_scale: Input should be a valid number"),
        (lambda d: d["artifacts"][0].update(sha256=5), "artifacts.0.sha256: Input should be a valid string"),
        (lambda d: d.update(diameter=[30.0, 10.0]), "need 0 < min <= max"),
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


def test_export_folder_artifacts_resolve_inside_the_folder_not_the_cwd(
    tmp_path: Path, tiny_export: Callable, slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_export(tmp_path / "export")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "model.int8.onnx").write_bytes(b"not the model")
    monkeypatch.chdir(decoy)
    code, text = invoke("infer", slide, "--model", folder, "-o", tmp_path / "l.tif")
    assert code == 0, text
    assert "model.int8.onnx" in text and tifffile.imread(tmp_path / "l.tif").shape == (64, 64)


# options ---------------------------------------------------------------------------------------------
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
    tmp_path: Path, slide: Path, tiny_onnx: Callable, option: str, value: str, message: str
) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif", option, value))
    assert pytest.importorskip("re").search(message, line), line
    assert not (tmp_path / "l.tif").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_slide_is_one_line(tmp_path: Path, slide: Path, tiny_onnx: Callable) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    slide.chmod(0)
    line = error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    assert str(slide) in line


# temporary files -----------------------------------------------------------------------------------
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
    tmp_path: Path, slide: Path, tiny_onnx: Callable
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "l.tif").symlink_to(victim)
    model = tiny_onnx(tmp_path / "m.onnx")
    assert "already exists" in error_line(*invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif"))
    code, text = invoke("infer", slide, "--model", model, "-o", tmp_path / "l.tif", "--overwrite")
    assert code == 0, text
    assert victim.read_text() == "precious" and not (tmp_path / "l.tif").is_symlink()


def test_leftovers_of_killed_runs_are_swept(tmp_path: Path, slide: Path, tiny_onnx: Callable) -> None:
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


def test_outputs_get_the_usual_permissions(tmp_path: Path, slide: Path, tiny_onnx: Callable) -> None:
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


def test_eval_truncated_and_oversized_tiffs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_permission_denied_is_one_line_for_every_command(
    tmp_path: Path, slide: Path, tiny_onnx: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root nothing is unreadable, so the OS error is raised where a file is opened."""
    import builtins
    import errno

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
