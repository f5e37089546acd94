"""The tiny ONNX networks of conftest.py (built with onnx.helper, no torch) do what the runtime tests
rely on: an identity-like one for exact split -> merge checks and a 'nuclei' one whose
Gaussian-derivative flows and blurred-intensity logit yield real instances."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def test_identity_net_maps_pixels(tmp_path: Path, identity_net: Callable, run_onnx: Callable) -> None:
    x = np.random.default_rng(0).random((2, 1, 32, 48), dtype=np.float32)
    y = run_onnx(identity_net(tmp_path / "id.onnx"), x)
    assert y.shape == (2, 3, 32, 48)
    np.testing.assert_array_equal(y[:, 1], 2 * x[:, 0])


def test_tiny_onnx_takes_any_channel_count(tmp_path: Path, tiny_onnx: Callable, run_onnx: Callable) -> None:
    x = np.random.default_rng(1).random((1, 2, 16, 32), dtype=np.float32)
    y = run_onnx(tiny_onnx(tmp_path / "t.onnx", channels=2), x)
    np.testing.assert_array_equal(y[0], np.stack([x[0, 0], 2 * x[0, 0], -x[0, 0]]))


def test_nuclei_net_flows_point_to_blob_centre(
    tmp_path: Path, nuclei_net: Callable, run_onnx: Callable
) -> None:
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / (2 * 6.0**2)).astype(np.float32)
    y = run_onnx(nuclei_net(tmp_path / "n.onnx"), blob[None, None])[0]
    assert y[0, 20, 34] > 4.5 and abs(y[1, 20, 34]) < 0.5  # above the centre: flow points down (+y)
    assert y[1, 30, 44] < -4.5  # right of the centre: flow points left
    assert y[2, 30, 34] > 0 > y[2, 2, 2]
