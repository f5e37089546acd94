"""Manifest: schema round trip, validation on load, and refusal of tampered artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model.manifest import (
    SCHEMA,
    Artifact,
    Manifest,
    TensorRTInfo,
    load_manifest,
    sha256_file,
    verify_artifact,
)


def make_export(tmp_path: Path) -> Manifest:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx, but hashed all the same")
    art = Artifact("model.onnx", "onnx", "fp32", sha256_file(model), {"max_abs": 1e-6}, True)
    manifest = Manifest(
        channels=1,
        diameter=[10.0, 30.0],
        normalization={"lower": 1.0, "upper": 99.0},
        source_sha256="0" * 64,
        artifacts=[art],
        tensorrt=TensorRTInfo("10.3.0", "Orin", "8.7", {"batch": [1, 4, 8]}),
        tools={"onnx": "1.x"},
    )
    manifest.save(tmp_path)
    return manifest


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    written = make_export(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded == written
    assert loaded.root == tmp_path
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["schema"] == SCHEMA and data["flow_scale"] == 5.0 and data["size_multiple"] == 16
    assert data["input_name"] == "image" and data["output_name"] == "flows"


def test_max_extent_round_trips_and_is_optional(tmp_path: Path) -> None:
    written = make_export(tmp_path)
    assert load_manifest(tmp_path).max_extent is None  # as written before the field existed
    written.max_extent = 51.57
    written.save(tmp_path)
    assert load_manifest(tmp_path).max_extent == 51.57
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["max_extent"]  # an old manifest: no such key at all
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path).max_extent is None


def test_verify_artifact_accepts_the_original(tmp_path: Path) -> None:
    manifest = load_manifest(make_export(tmp_path).save(tmp_path))
    assert verify_artifact(manifest, "model.onnx") == tmp_path / "model.onnx"


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    make_export(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"swapped model")
    manifest = load_manifest(tmp_path)
    with pytest.raises(UserError, match="model.onnx does not match its manifest sha256.*re-export"):
        verify_artifact(manifest, tmp_path / "model.onnx")


def test_unlisted_and_missing_artifacts_are_refused(tmp_path: Path) -> None:
    make_export(tmp_path)
    manifest = load_manifest(tmp_path)
    (tmp_path / "other.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="not listed"):
        verify_artifact(manifest, "other.onnx")
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(UserError, match="missing"):
        verify_artifact(manifest, "model.onnx")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema="cyclepose-manifest/0"), "schema"),
        (lambda d: d.update(channels=3), "channels 3"),
        (lambda d: d["artifacts"][0].update(precision="int4"), "format/precision"),
        (lambda d: d["artifacts"][0].update(file="../model.onnx"), "path instead of a file name"),
        (lambda d: d.pop("artifacts"), "malformed"),
        (lambda d: d.update(surprise=1), "malformed"),
        (lambda d: d.update(max_extent=-3), "max_extent"),
    ],
)
def test_invalid_manifests_are_refused(tmp_path: Path, edit, message: str) -> None:
    make_export(tmp_path)
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        load_manifest(tmp_path)


def test_missing_manifest_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_artifact_lookup_lists_what_exists(tmp_path: Path) -> None:
    manifest = make_export(tmp_path)
    assert manifest.artifact("onnx", "fp32").file == "model.onnx"
    with pytest.raises(UserError, match=r"it has onnx/fp32"):
        manifest.artifact("tensorrt", "fp16")
