"""Shared test setup: caches inside a per-run temporary folder (tests write nothing to home folders), and
the tiny ONNX networks and export folders several test modules use, as fixtures (no test module imports
another). The networks are built with onnx.helper, no torch; a fixture skips its test when onnx or
onnxruntime is missing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

_CACHE = tempfile.mkdtemp(prefix="cyclepose-test-cache-")
for _var in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "TRITON_CACHE_DIR"):
    os.environ.setdefault(_var, os.path.join(_CACHE, _var.lower()))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_CACHE, "numba"))
os.environ.setdefault("OMP_NUM_THREADS", "2")


# builders ----------------------------------------------------------------------------------------
def _io(channels: int = 1) -> tuple:
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])
    out = helper.make_tensor_value_info("flows", TensorProto.FLOAT, ["N", 3, "H", "W"])
    return inp, out


def _save(graph: object, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_identity_net(path: Path) -> Path:
    """flows = (x, 2x, -x): every output channel is a known function of the input pixel."""
    from onnx import helper, numpy_helper

    inp, out = _io()
    scales = numpy_helper.from_array(np.array([1.0, 2.0, -1.0], np.float32).reshape(1, 3, 1, 1), "scales")
    nodes = [
        helper.make_node("Concat", ["image", "image", "image"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "scales"], ["flows"]),
    ]
    return _save(helper.make_graph(nodes, "identity", [inp], [out], [scales]), path)


def build_tiny_onnx(path: Path, channels: int = 1) -> Path:
    """A 1x1 conv with dynamic N/H/W: flows = (x0, 2 x0, -x0) of the first input channel."""
    from onnx import helper, numpy_helper

    inp, out = _io(channels)
    weight = np.zeros((3, channels, 1, 1), np.float32)
    weight[:, 0, 0, 0] = (1.0, 2.0, -1.0)
    node = helper.make_node("Conv", ["image", "w"], ["flows"])
    return _save(
        helper.make_graph([node], "tiny", [inp], [out], [numpy_helper.from_array(weight, "w")]), path
    )


def gaussian_kernels(sigma: float) -> np.ndarray:
    """(3, 1, K, K): Gaussian, d/dy and d/dx of a Gaussian."""
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    dg = t / sigma**2 * g  # ONNX Conv correlates: +t gives +d/dy
    k = np.stack([np.outer(g, g), np.outer(dg, g), np.outer(g, dg)])
    return k[:, None].astype(np.float32)


def build_nuclei_net(path: Path, sigma: float = 3.0, gain: float = 12.0, level: float = 0.2) -> Path:
    """flows = 5 x unit gradient of the blurred image (to bright centres); logit = gain (blur - level)."""
    from onnx import helper, numpy_helper

    inp, out = _io()
    k = gaussian_kernels(sigma)
    r = k.shape[-1] // 2
    inits = [
        numpy_helper.from_array(k, "kernels"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "parts"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array(5.0, np.float32), "five"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array(level, np.float32), "level"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "kernels"], ["conv"], pads=[r, r, r, r]),
        helper.make_node("Split", ["conv", "parts"], ["blur", "grad"], axis=1),
        helper.make_node("Mul", ["grad", "grad"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["ss"], keepdims=1),
        helper.make_node("Add", ["ss", "eps"], ["ss_eps"]),
        helper.make_node("Sqrt", ["ss_eps"], ["mag"]),
        helper.make_node("Div", ["five", "mag"], ["inv"]),
        helper.make_node("Mul", ["grad", "inv"], ["unit5"]),
        helper.make_node("Sub", ["blur", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Concat", ["unit5", "logit"], ["flows"], axis=1),
    ]
    return _save(helper.make_graph(nodes, "nuclei", [inp], [out], inits), path)


def run_onnx_model(path: Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": image.astype(np.float32)})[0]


def build_tiny_export(folder: Path) -> Path:
    """An export folder with a fp32 and an 'int8' artifact (the same tiny model) and a manifest as an
    older export wrote it (no max_extent)."""
    from cyclepose_deploy.runtime.model.manifest import SCHEMA

    folder.mkdir()
    artifacts = []
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        sha = hashlib.sha256(build_tiny_onnx(folder / name).read_bytes()).hexdigest()
        artifacts.append({"file": name, "format": "onnx", "precision": precision, "sha256": sha})
    manifest = {
        "schema": SCHEMA,
        "channels": 1,
        "diameter": [10.0, 30.0],
        "normalization": {"lower": 1.0, "upper": 99.0},
        "source_sha256": "0" * 64,
        "artifacts": artifacts,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# fixtures: the builders, skipping where onnx / onnxruntime are missing ------------------------------
def _needs_onnx() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def identity_net() -> Callable[[Path], Path]:
    _needs_onnx()
    return build_identity_net


@pytest.fixture(scope="session")
def nuclei_net() -> Callable[..., Path]:
    _needs_onnx()
    return build_nuclei_net


@pytest.fixture(scope="session")
def tiny_onnx() -> Callable[..., Path]:
    _needs_onnx()
    return build_tiny_onnx


@pytest.fixture(scope="session")
def tiny_export() -> Callable[[Path], Path]:
    _needs_onnx()
    return build_tiny_export


@pytest.fixture(scope="session")
def run_onnx() -> Callable[[Path, np.ndarray], np.ndarray]:
    _needs_onnx()
    return run_onnx_model


# training -----------------------------------------------------------------------------------------
TINY_TRAIN = {
    "widths": [8, 16, 32, 64],
    "tile": 64,
    "batch": 2,
    "bank_canvases": 2,
    "bank_canvas": 128,
    "render_width": 8,
    "disc_base": 8,
    "calibration_batches": 2,
    "pool": 4,
}


@pytest.fixture(scope="session")
def tiny_train_config() -> Callable[..., object]:
    """A factory of TrainConfig with tiny nets and crops, for fast CPU training tests:
    tiny_train_config(steps=6, lr_s=2e-3). torch is imported only by the tests that use it."""
    from cyclepose_deploy.train.loop import TrainConfig

    def make(**overrides: object) -> TrainConfig:
        return TrainConfig(**{**TINY_TRAIN, **overrides})  # type: ignore[arg-type]

    return make


# the CLI, labels and scores: helpers every test module may ask for ---------------------------------
def invoke_cli(*args: object) -> tuple[int, str]:
    """Run `cyclepose ARGS` in this process: (exit code, stdout + stderr)."""
    from typer.testing import CliRunner

    from cyclepose_deploy.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_error_line(code: int, text: str) -> str:
    """Bad input's contract: exit 2, no traceback, exactly one line `error: ...` (returned)."""
    assert code == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def assert_same_labels(a: np.ndarray, b: np.ndarray) -> None:
    """Identical segmentations: equal after relabelling (a one-to-one map between the label values)."""
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])), "labels differ"


def f1_score(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    from cyclepose_deploy.metrics import match_instances

    return match_instances(pred, truth, [threshold]).scores[0].f1


@pytest.fixture(scope="session")
def invoke() -> Callable[..., tuple[int, str]]:
    return invoke_cli


@pytest.fixture(scope="session")
def error_line() -> Callable[[int, str], str]:
    return one_error_line


@pytest.fixture(scope="session")
def same_labels() -> Callable[[np.ndarray, np.ndarray], None]:
    return assert_same_labels


@pytest.fixture(scope="session")
def f1() -> Callable[..., float]:
    return f1_score
