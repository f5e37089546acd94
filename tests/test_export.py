"""Export: tiny S and a Cellpose-3-layout state dict -> ONNX fp32/fp16/int8 verified against torch, the
manifest, the failure gate, and the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from cyclepose_deploy.cli import app
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.export.compare import compare_arrays, compare_labels
from cyclepose_deploy.export.fp16 import convert_fp16
from cyclepose_deploy.export.int8 import TileReader, bn_as_conv
from cyclepose_deploy.export.onnx_export import export_fp32
from cyclepose_deploy.export.pipeline import ExportOptions, run_export
from cyclepose_deploy.export.profiles import DEFAULT
from cyclepose_deploy.export.torch_runner import TorchRunner
from cyclepose_deploy.export.verify import Thresholds
from cyclepose_deploy.nets.segmenter import Segmenter
from cyclepose_deploy.runtime.backends.ort import OrtRunner
from cyclepose_deploy.runtime.model.artifacts import resolve_model
from cyclepose_deploy.runtime.model.manifest import load_manifest, verify_artifact
from cyclepose_deploy.synth.shapes import ShapePrior
from cyclepose_deploy.train.checkpoint import save_checkpoint

WIDTHS = [8, 16, 32, 64]


def tiny_net(channels: int = 1, seed: int = 0) -> Segmenter:
    torch.manual_seed(seed)
    net = Segmenter(channels, WIDTHS)
    for module in net.modules():  # non-trivial BN statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    config = {"in_channels": 1, "widths": WIDTHS, "diameter": [10.0, 30.0], "tile": 64}
    config["normalization"] = {"lower": 1.0, "upper": 99.0}
    save_checkpoint(path, {"config": config, "S": tiny_net().state_dict(), "step": 0})
    return path


def small_options(checkpoint: Path, out_dir: Path, **changes: object) -> ExportOptions:
    base = ExportOptions(
        checkpoint=checkpoint,
        out_dir=out_dir,
        profile=dataclasses.replace(DEFAULT, tile=64),
        engine=None,
        verify_size=128,
        verify_tile=64,
        calib_tiles=4,
        batch=2,
        threads=1,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out, lines = tmp_path_factory.mktemp("export"), []
    run_export(small_options(checkpoint, out), report=lines.append)
    return out, lines


@pytest.mark.parametrize("channels", [1, 2])
def test_onnx_matches_torch_at_unseen_sizes(tmp_path: Path, channels: int) -> None:
    net = tiny_net(channels, seed=channels)
    path, bn = export_fp32(net, tmp_path / "model.onnx", channels)
    assert bn["batchnorm_total"] == bn["batchnorm_folded"] + bn["batchnorm_remaining"]
    rng = np.random.default_rng(0)
    with TorchRunner(net, channels) as ref, OrtRunner(path, threads=1) as ort:
        for shape in [(1, channels, 64, 64), (3, channels, 96, 160), (2, channels, 208, 48)]:
            x = rng.random(shape, dtype=np.float32)
            assert compare_arrays(str(shape), ref.infer(x), ort.infer(x), 1e-4), shape


def test_export_writes_verified_artifacts_and_manifest(exported: tuple[Path, list[str]]) -> None:
    out, lines = exported
    manifest = load_manifest(out)
    files = {(a.format, a.precision): a for a in manifest.artifacts}
    assert set(files) == {("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8")}
    for art in manifest.artifacts:
        assert art.passed and verify_artifact(manifest, art.file).is_file()
    fp32 = files[("onnx", "fp32")].verification
    assert fp32["kind"] == "array" and fp32["max_abs"] <= 1e-4 and {"p99_abs", "mean_rel"} <= set(fp32)
    assert files[("onnx", "int8")].verification["kind"] == "labels"
    assert manifest.diameter == [10.0, 30.0] and manifest.channels == 1 and manifest.flow_scale == 5.0
    assert manifest.max_extent == pytest.approx(ShapePrior().max_extent(), abs=0.01)  # the prior's longest
    assert resolve_model(out).extent == manifest.max_extent
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest.tools) and manifest.tensorrt is None
    assert manifest.export["batchnorm_total"] > 0
    assert any(line.startswith("engine: skipped") for line in lines)
    assert any("trtexec --onnx=" in line and "--maxShapes=image:16x1x512x512" in line for line in lines)
    assert not list(out.glob(".*partial*")) and not list(out.glob(".*.pre.onnx"))


def test_fp16_model_keeps_fp32_io_and_is_checked(exported: tuple[Path, list[str]]) -> None:
    model = onnx.load(str(exported[0] / "model.fp16.onnx"))
    onnx.checker.check_model(model)
    float32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == float32
    assert model.graph.output[0].type.tensor_type.elem_type == float32
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def test_int8_model_is_quantized(exported: tuple[Path, list[str]]) -> None:
    ops = {node.op_type for node in onnx.load(str(exported[0] / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "BatchNormalization" not in ops  # no float island: every BN went in as a depthwise conv


def test_batchnorm_as_depthwise_conv_is_the_same_function(tmp_path: Path) -> None:
    net = tiny_net(seed=4)
    for module in net.modules():  # every BN parameter away from its initial value
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    path, _ = export_fp32(net, tmp_path / "model.onnx", 1)
    model = onnx.load(str(path))
    before = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    assert bn_as_conv(model) == before > 0
    assert not any(node.op_type == "BatchNormalization" for node in model.graph.node)
    onnx.checker.check_model(model)
    rewritten = tmp_path / "dw.onnx"
    onnx.save(model, str(rewritten))
    x = np.random.default_rng(1).random((2, 1, 96, 64), dtype=np.float32)
    with OrtRunner(path, threads=1) as ref, OrtRunner(rewritten, threads=1) as dw:
        assert compare_arrays("bn as conv", ref.infer(x), dw.infer(x), 1e-4)


def test_failed_check_fails_the_export_naming_it_and_keeps_the_previous_one(
    checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    run_export(small_options(checkpoint, out, precisions=("fp32",)), report=lambda line: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    impossible = Thresholds(int8_min_f1=1.5)
    options = small_options(checkpoint, out, precisions=("fp32", "int8"), thresholds=impossible)
    with pytest.raises(UserError, match=r"model.int8.onnx mask F1 .* < 1.5 \(short by"):
        run_export(options, report=lambda line: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export still works
    assert load_manifest(out).artifacts[0].passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left
    with pytest.raises(UserError, match=r"model.int8.onnx mask F1"):
        run_export(
            small_options(checkpoint, tmp_path / "new", precisions=("fp32", "int8"), thresholds=impossible),
            report=lambda line: None,
        )
    assert not (tmp_path / "new").exists()


def test_export_refuses_a_folder_of_other_files(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not part of an export"):
        run_export(small_options(checkpoint, tmp_path), report=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cellpose3_state_dict_exports_through_the_cli(tmp_path: Path) -> None:
    state = tmp_path / "cellpose_nuclei"
    torch.save(tiny_net(2, seed=5).state_dict(), state)
    out = tmp_path / "out"
    args = ["export", str(state), "-o", str(out), "--precision", "fp32", "--no-engine"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.channels == 2 and [a.file for a in manifest.artifacts] == ["model.onnx"]
    model = onnx.load(str(out / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 2, "height", "width"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp8"], "--precision 'fp8' is invalid"),
        (["--opset", "7"], "--opset 7 must be a whole number from 13 to 21"),
        (["--profile", "no-such-profile"], "profile no-such-profile not found"),
        (["--calib", "/nonexistent.tif"], "calibration image /nonexistent.tif not found"),
    ],
)
def test_cli_user_errors_are_one_line(
    checkpoint: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["export", str(checkpoint), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_label_comparison_counts_matches() -> None:
    ref = np.zeros((32, 32), np.uint32)
    ref[2:10, 2:10], ref[20:30, 20:30] = 1, 2
    cand = ref.copy()
    cand[20:30, 20:30] = 0  # one object lost
    flows = compare_arrays("x", np.zeros(3), np.zeros(3), None)
    result = compare_labels("int8", [ref, ref], [ref, cand], flows, 0.9)
    assert result.n_reference == 4 and result.n_candidate == 3
    assert result.f1 == pytest.approx(6 / 7) and not result
    assert compare_labels("int8", [ref], [ref], flows, 0.9)


def test_calibration_reader_feeds_small_groups() -> None:
    reader = TileReader(np.zeros((5, 1, 16, 16), np.float32), group=2)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(item["image"].shape[0])
    assert sizes == [2, 2, 1]
    reader.rewind()
    assert reader.get_next() is not None


def test_fp16_conversion_is_close_on_random_net(tmp_path: Path) -> None:
    net = tiny_net(1, seed=3)
    fp32, _ = export_fp32(net, tmp_path / "model.onnx", 1)
    fp16 = convert_fp16(fp32, tmp_path / "model.fp16.onnx")
    x = np.random.default_rng(1).random((2, 1, 64, 96), dtype=np.float32)
    with OrtRunner(fp32, threads=1) as a, OrtRunner(fp16, threads=1) as b:
        result = compare_arrays("fp16", a.infer(x), b.infer(x), 0.05)
    assert result and result.max_abs > 0  # really ran in half precision


def test_calibration_images_are_read_and_tiled(tmp_path: Path) -> None:
    import tifffile

    from cyclepose_deploy.export.tiles import cut_tiles, read_images

    path = tmp_path / "calib.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((80, 96)) * 4000).astype(np.uint16))
    (image,) = read_images([path], channels=2)
    assert image.shape == (2, 80, 96) and image.dtype == np.float32
    assert 0.0 <= np.percentile(image, 50) <= 1.0
    assert cut_tiles([image], 64, 3).shape == (3, 2, 64, 64)
    with pytest.raises(UserError, match="smaller than the 128px tile"):
        cut_tiles([image], 128, 1)


def test_bioimageio_package_passes_the_spec_validator(
    checkpoint: Path, tmp_path: Path, run_onnx: Callable
) -> None:
    spec = pytest.importorskip("bioimageio.spec")
    import json

    import yaml

    out = tmp_path / "export"
    lines: list[str] = []
    scores = {f"{kind}@{t}": 0.5 for kind in ("f1", "ap") for t in ("0.5", "0.75", "0.9")}
    evaluation = tmp_path / "quality.json"
    evaluation.write_text(json.dumps({"results": {"cyclepose (m.pt)": {**scores, "images": 60}}}))
    options = small_options(
        checkpoint,
        out,
        precisions=("fp32",),
        bioimageio=True,
        bmz_maintainers=("octocat:Mona Lisa",),
        bmz_evaluation=evaluation,
    )
    run_export(options, report=lines.append)
    rdf = out / "bioimageio" / "rdf.yaml"
    # offline: the maintainer's GitHub account and the dataset id are looked up online by io checks
    descr = spec.load_description(rdf, perform_io_checks=False)
    assert descr.validation_summary.status in ("passed", "valid-format"), descr.validation_summary.format()
    from cyclepose_deploy.export.bioimageio import validate

    assert validate(rdf) is None  # the files' sha256 checked too
    assert any("bioimage.io package" in line for line in lines)
    data = yaml.safe_load(rdf.read_text())
    assert data["covers"] == ["cover.png"] and (out / "bioimageio" / "cover.png").stat().st_size > 1000
    assert data["maintainers"] == [{"github_user": "octocat", "name": "Mona Lisa"}]
    bmz = data["config"]["bioimageio"]
    assert bmz["evaluations"][0]["sample_count"] == 60 and bmz["target_structure"] == ["nucleus"]
    assert all("unit" not in axis for axis in data["inputs"][0]["axes"])  # no pixel size is claimed
    # the engine hint names no 'default' profile and, without the fp16 ONNX, builds from the fp32 one
    hint = " ".join(lines)
    assert "--profile default" not in hint and "model.fp16.onnx" not in hint and "--fp16" in hint
    # the test output is the ONNX model applied to the scale_range-normalised test input
    raw = np.load(out / "bioimageio" / "test_input.npy")
    low, high = np.percentile(raw, [1, 99])
    expected = np.load(out / "bioimageio" / "test_output.npy")
    got = run_onnx(out / "bioimageio" / "model.onnx", ((raw - low) / (high - low + 1e-6)).astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=1e-5)
