"""Tiny ONNX networks built with onnx.helper (no torch): an identity-like one for exact split -> merge
checks and a 'nuclei' one whose Gaussian-derivative flows and blurred-intensity logit yield real
instances. Other runtime tests import the builders from here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _io(channels: int = 1) -> tuple:
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])
    out = helper.make_tensor_value_info("flows", TensorProto.FLOAT, ["N", 3, "H", "W"])
    return inp, out


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def identity_net(path: Path) -> Path:
    """flows = (x, 2x, -x): every output channel is a known function of the input pixel."""
    inp, out = _io()
    scales = numpy_helper.from_array(np.array([1.0, 2.0, -1.0], np.float32).reshape(1, 3, 1, 1), "scales")
    nodes = [
        helper.make_node("Concat", ["image", "image", "image"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "scales"], ["flows"]),
    ]
    return _save(helper.make_graph(nodes, "identity", [inp], [out], [scales]), path)


def gaussian_kernels(sigma: float) -> np.ndarray:
    """(3, 1, K, K): Gaussian, d/dy and d/dx of a Gaussian."""
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    dg = t / sigma**2 * g  # ONNX Conv correlates: +t gives +d/dy
    k = np.stack([np.outer(g, g), np.outer(dg, g), np.outer(g, dg)])
    return k[:, None].astype(np.float32)


def nuclei_net(path: Path, sigma: float = 3.0, gain: float = 12.0, level: float = 0.2) -> Path:
    """flows = 5 x unit gradient of the blurred image (to bright centres); logit = gain (blur - level)."""
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


def run_onnx(path: Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": image.astype(np.float32)})[0]


def test_identity_net_maps_pixels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((2, 1, 32, 48), dtype=np.float32)
    y = run_onnx(identity_net(tmp_path / "id.onnx"), x)
    assert y.shape == (2, 3, 32, 48)
    np.testing.assert_array_equal(y[:, 1], 2 * x[:, 0])


def test_nuclei_net_flows_point_to_blob_centre(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / (2 * 6.0**2)).astype(np.float32)
    y = run_onnx(nuclei_net(tmp_path / "n.onnx"), blob[None, None])[0]
    assert y[0, 20, 34] > 4.5 and abs(y[1, 20, 34]) < 0.5  # above the centre: flow points down (+y)
    assert y[1, 30, 44] < -4.5  # right of the centre: flow points left
    assert y[2, 30, 34] > 0 > y[2, 2, 2]
