"""`cyclepose infer` end to end on small synthetic slides, and every bad input: one line, exit 2,
no traceback, no output left behind."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cyclepose_deploy.cli import app
from cyclepose_deploy.runtime.model.manifest import sha256_file
from cyclepose_deploy.synth.slide import make_slide

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def data(
    tmp_path_factory: pytest.TempPathFactory, nuclei_net: Callable, identity_net: Callable
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("infer")
    image, labels = make_slide(320, 288, 5)
    tifffile.imwrite(
        root / "slide.ome.tif",
        image,
        ome=True,
        tile=(64, 64),
        compression="zlib",
        metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65},
    )
    np.save(root / "gt.npy", labels)
    return {
        "root": root,
        "slide": root / "slide.ome.tif",
        "net": nuclei_net(root / "nuclei.onnx"),
        "identity": identity_net(root / "identity.onnx"),
    }


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["infer", *[str(a) for a in args]])
    return result.exit_code, result.output  # stdout and stderr interleaved


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_infer_writes_labels_objects_preview_prob(data: dict[str, Path], tmp_path: Path) -> None:
    code, text = invoke(
        data["slide"],
        "--model",
        data["net"],
        "-o",
        tmp_path / "labels.tif",
        "--tile",
        128,
        "--chunk",
        160,
        "--objects",
        tmp_path / "obj.csv",
        "--preview",
        tmp_path / "p.png",
        "--prob",
        tmp_path / "prob.tif",
    )
    assert code == 0, text
    assert "objects in 320x288 px" in text and "MPix/s" in text
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        labels = tif.asarray()
        assert tif.is_bigtiff and tif.pages[0].is_tiled and 'PhysicalSizeX="0.65"' in tif.ome_metadata
    n = int(labels.max())
    assert labels.dtype == np.uint32 and n > 20
    assert np.array_equal(np.unique(labels), np.arange(n + 1))
    rows = (tmp_path / "obj.csv").read_text().splitlines()
    assert rows[0].startswith("label,centroid_y,centroid_x,area") and len(rows) == n + 1
    first = rows[1].split(",")
    assert int(first[3]) == int((labels == int(first[0])).sum())
    prob = tifffile.imread(tmp_path / "prob.tif")
    assert prob.dtype == np.uint8 and prob.shape == labels.shape and prob[labels > 0].mean() > 128
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(tmp_path) == ["labels.tif", "obj.csv", "p.png", "prob.tif"]


def expect_error(code: int, text: str, *fragments: str) -> None:
    assert code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_and_corrupt_slide(data: dict[str, Path], tmp_path: Path) -> None:
    expect_error(
        *invoke(tmp_path / "nope.tif", "--model", data["net"], "-o", tmp_path / "l.tif"), "not found"
    )
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    expect_error(
        *invoke(tmp_path / "bad.tif", "--model", data["net"], "-o", tmp_path / "l.tif"), "cannot read"
    )
    assert leftovers(tmp_path) == ["bad.tif"]


def test_truncated_tile_data(data: dict[str, Path], tmp_path: Path) -> None:
    blob = data["slide"].read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[: len(blob) // 2])
    expect_error(*invoke(tmp_path / "cut.tif", "--model", data["net"], "-o", tmp_path / "l.tif"), "cut.tif")
    assert leftovers(tmp_path) == ["cut.tif"]


def test_bad_dimensions_and_channel(data: dict[str, Path], tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "z.ome.tif", np.zeros((3, 32, 32), np.uint16), ome=True, metadata={"axes": "ZYX"}
    )
    expect_error(*invoke(tmp_path / "z.ome.tif", "--model", data["net"], "-o", tmp_path / "l.tif"), "2D")
    tifffile.imwrite(
        tmp_path / "c.ome.tif", np.zeros((2, 32, 32), np.uint16), ome=True, metadata={"axes": "CYX"}
    )
    expect_error(
        *invoke(tmp_path / "c.ome.tif", "--model", data["net"], "-o", tmp_path / "l.tif", "--channel", 2),
        "--channel 2",
        "0..1",
    )
    assert leftovers(tmp_path) == ["c.ome.tif", "z.ome.tif"]


def test_bad_options(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "l.tif"
    expect_error(*invoke(data["slide"], "--model", data["net"], "-o", out, "--tile", 100), "multiple of 16")
    expect_error(*invoke(data["slide"], "--model", data["net"], "-o", out, "--diameter", -3), "--diameter")
    expect_error(*invoke(data["slide"], "--model", tmp_path / "m.onnx", "-o", out), "not found")
    expect_error(
        *invoke(data["slide"], "--model", data["net"], "-o", tmp_path / "no" / "l.tif"), "does not exist"
    )
    # --engine is the old name of --model, kept as an alias
    expect_error(*invoke(data["slide"], "--engine", data["net"], "-o", data["slide"]), "differ")
    assert leftovers(tmp_path) == []


def write_manifest(folder: Path, onnx_path: Path, sha: str | None = None, **extra: object) -> None:
    target = folder / "model.onnx"
    target.write_bytes(onnx_path.read_bytes())
    art = {
        "file": "model.onnx",
        "format": "onnx",
        "precision": "fp32",
        "sha256": sha or sha256_file(target),
        "verification": {},
        "passed": True,
    }
    manifest = {
        "schema": "cyclepose-manifest/1",
        "channels": 1,
        "diameter": [10, 30],
        "normalization": {"lower": 1.0, "upper": 99.0},
        "source_sha256": "0" * 64,
        "artifacts": [art, *extra.get("more", [])],
        "flow_scale": 5.0,
        "tensorrt": extra.get("tensorrt"),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_hash_mismatch(data: dict[str, Path], tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    write_manifest(export, data["net"], sha="f" * 64)
    out = tmp_path / "l.tif"
    expect_error(*invoke(data["slide"], "--model", export, "-o", out), "sha256")
    expect_error(*invoke(data["slide"], "--model", export / "model.onnx", "-o", out), "sha256")
    assert leftovers(tmp_path) == ["export"]


def engine_export(folder: Path, net: Path) -> Path:
    """An export folder with an ONNX and a (fake) engine built for a Jetson Orin with TensorRT 10.3."""
    folder.mkdir()
    (folder / "model.engine").write_bytes(b"not an engine")
    engine = {
        "file": "model.engine",
        "format": "tensorrt",
        "precision": "fp16",
        "sha256": sha256_file(folder / "model.engine"),
        "verification": {},
        "passed": True,
    }
    trt = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    write_manifest(folder, net, more=[engine], tensorrt=trt)
    return folder


def test_export_folder_picks_verified_onnx_without_tensorrt(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cyclepose_deploy.runtime.model import artifacts

    monkeypatch.setattr(artifacts, "gpu_tensorrt_available", lambda: False)
    export = engine_export(tmp_path / "export", data["net"])
    code, text = invoke(data["slide"], "--model", export, "-o", tmp_path / "l.tif", "--tile", 128)
    assert code == 0, text
    assert "model.onnx (onnx fp32, manifest)" in text
    expect_error(
        *invoke(data["slide"], "--model", export / "model.engine", "-o", tmp_path / "e.tif"),
        "TensorRT engine",
        "use the .onnx",
    )
    assert leftovers(tmp_path) == ["export", "l.tif"]


def test_engine_built_for_another_gpu(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner compares the manifest's TensorRT version and GPU with this machine's before loading."""
    from types import SimpleNamespace

    from cyclepose_deploy.runtime.backends import tensorrt as trt_backend
    from cyclepose_deploy.runtime.model import artifacts

    monkeypatch.setattr(artifacts, "gpu_tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_backend, "trt", SimpleNamespace(__version__="10.9.0"))
    monkeypatch.setattr(trt_backend.cuda, "device_properties", lambda device=0: ("NVIDIA H100", "9.0"))
    export = engine_export(tmp_path / "export", data["net"])
    code, text = invoke(data["slide"], "--model", export, "-o", tmp_path / "l.tif")
    expect_error(code, text, "built for TensorRT 10.3.0", "Orin", "rebuild")
    assert leftovers(tmp_path) == ["export"]


def test_full_disk_leaves_nothing(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    from cyclepose_deploy.runtime.outputs import tiff

    monkeypatch.setattr(tiff, "tiles_of", lambda *a, **k: full())
    out = tmp_path / "out"
    out.mkdir()
    code, text = invoke(
        data["slide"], "--model", data["net"], "-o", out / "l.tif", "--objects", out / "o.csv", "--tile", 128
    )
    expect_error(code, text, "No space left", "l.tif")
    # no half-written output; the finished chunks are kept in the run folder, and once there is space
    # again --resume writes the outputs without running the network again
    assert leftovers(out) == ["l.tif.run"]
    assert "--resume" in text
    monkeypatch.undo()
    code, text = invoke(
        data["slide"],
        "--model",
        data["net"],
        "-o",
        out / "l.tif",
        "--objects",
        out / "o.csv",
        "--tile",
        128,
        "--resume",
    )
    assert code == 0, text
    assert "network tiles 0" in text
    assert leftovers(out) == ["l.tif", "o.csv"]


def test_full_disk_during_chunks(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cyclepose_deploy.runtime.run.scratch import ScratchStore

    def full(self: object, result: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ScratchStore, "write", full)
    code, text = invoke(data["slide"], "--model", data["net"], "-o", tmp_path / "l.tif", "--tile", 128)
    expect_error(code, text, "No space left")
    assert leftovers(tmp_path) == []
