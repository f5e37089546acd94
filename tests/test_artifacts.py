"""The one artifact resolver (runtime/model/artifacts.py), as infer, bench and export's verification use it:
accepted files, manifests beside them, the best artifact of an export folder, and the halo extent."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model import artifacts
from cyclepose_deploy.runtime.model.artifacts import model_from_file, resolve_model, resolve_models
from cyclepose_deploy.runtime.model.manifest import load_manifest, sha256_file


def add_engine(folder: Path, name: str) -> None:
    """List a (fake) TensorRT engine file in the export's manifest."""
    (folder / name).write_bytes(b"not an engine")
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    art = {"file": name, "format": "tensorrt", "precision": "fp16", "sha256": sha256_file(folder / name)}
    data["artifacts"].append(art)
    data["tensorrt"] = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("suffix", [".engine", ".plan", ".trt"])
def test_every_engine_suffix_is_accepted_beside_its_manifest(
    tmp_path: Path, tiny_export: Callable, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_export(tmp_path / "export")
    add_engine(folder, f"model{suffix}")
    model = resolve_model(folder / f"model{suffix}")
    assert (model.format, model.precision, model.from_manifest) == ("tensorrt", "fp16", True)
    assert [m.path.name for m in resolve_models([folder])] == [
        "model.onnx",
        "model.int8.onnx",
        f"model{suffix}",
    ]
    monkeypatch.setattr(artifacts, "gpu_tensorrt_available", lambda: True)
    assert resolve_model(folder).path.name == f"model{suffix}"  # the engine first where TensorRT runs
    monkeypatch.setattr(artifacts, "gpu_tensorrt_available", lambda: False)
    assert resolve_model(folder).path.name == "model.int8.onnx"  # else the fastest CPU artifact
    with pytest.raises(UserError, match="TensorRT engine.*use the .onnx"):
        model.runner()


def test_bare_files_and_what_is_refused(tmp_path: Path, tiny_onnx: Callable) -> None:
    bare = resolve_model(tiny_onnx(tmp_path / "model.fp16.onnx"))
    assert (bare.format, bare.precision, bare.from_manifest, bare.diameter) == (
        "onnx",
        "fp16",
        False,
        (10.0, 30.0),
    )
    for name in ("lone.engine", "lone.plan", "lone.trt"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(UserError, match="no manifest.json beside it"):
            resolve_model(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=r"not a model file: give an export folder or a \.onnx / \.engine"):
        resolve_models([tmp_path / "notes.txt"])
    with pytest.raises(UserError, match="not found"):
        resolve_model(tmp_path / "absent.onnx")


def test_max_extent_from_the_manifest_or_a_conservative_fallback(
    tmp_path: Path, tiny_export: Callable
) -> None:
    folder = tiny_export(tmp_path / "export")
    old = resolve_model(folder)
    assert old.max_extent is None and old.extent == 2 * 30.0  # old manifest: 2 x diameter[1]
    manifest = load_manifest(folder)
    manifest.max_extent = 51.6
    manifest.save(folder)
    assert resolve_model(folder).extent == 51.6


def test_model_from_file_gives_exports_verification_its_runner(tmp_path: Path, tiny_onnx: Callable) -> None:
    model = model_from_file(tiny_onnx(tmp_path / "model.int8.onnx"))
    runner = model.runner(threads=1)
    assert (runner.precision, runner.info()["threads"]) == ("int8", 1)
    assert model_from_file(tmp_path / "model.engine").precision == "fp16"
