"""The slide's linear resampling (runtime.source.resample) is scipy's map_coordinates to the bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cyclepose_deploy.runtime.source.resample import bilinear
from cyclepose_deploy.runtime.source.slide import ScaledSource

DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float32", "float64"]


def _reference(raw: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    coords = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(raw, coords, order=1, mode="nearest").astype(np.float32)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    scale=st.one_of(st.sampled_from([0.5, 1.047, 1.149, 2.0, 4.0]), st.floats(0.07, 4.0)),
    seed=st.integers(0, 2**16),
)
def test_bilinear_equals_map_coordinates(dtype: str, shape: tuple[int, int], scale: float, seed: int) -> None:
    """Same weights, same order of the products, same rounding to integer dtypes (half-integers
    included: values on a grid of 7 make exact .5 results common), NaN where a neighbour is NaN."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        raw = ((rng.random(shape) - 0.3) * 1000).astype(dtype)
        raw.flat[rng.integers(raw.size)] = np.nan
    else:
        info = np.iinfo(dtype)
        raw = (rng.integers(max(info.min, -3000), min(info.max, 3000), shape) // 7 * 7).astype(dtype)
    size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    ys = (np.arange(size[0]) + 0.5) / scale - 0.5  # ScaledSource's pixel centres, -0.5..n-0.5
    xs = (np.arange(size[1]) + 0.5) / scale - 0.5
    assert np.array_equal(bilinear(raw, ys, xs), _reference(raw, ys, xs), equal_nan=True)


def test_scaled_source_windows_equal_the_whole_image_resampled() -> None:
    """A window read from the rescaled slide is the same window of the whole rescaled slide."""
    from cyclepose_deploy.runtime.source.array import ArraySource

    image = np.random.default_rng(3).integers(0, 4000, (300, 257)).astype(np.uint16)
    source = ArraySource(image)
    scaled = ScaledSource(source, 1.149)
    whole = scaled.read(0, scaled.shape[0], 0, scaled.shape[1])
    assert np.array_equal(scaled.read(37, 120, 200, 295), whole[37:120, 200:295])
    ys = (np.arange(scaled.shape[0]) + 0.5) / 1.149 - 0.5
    xs = (np.arange(scaled.shape[1]) + 0.5) / 1.149 - 0.5
    assert np.array_equal(whole, _reference(source.read(0, 300, 0, 257), ys, xs))


def test_bilinear_kernel_equals_map_coordinates_in_float64() -> None:
    """Before any cast: ndimage takes the upper weight as 1 minus the lower (not t), 1 ulp apart."""
    from cyclepose_deploy.runtime.source.resample import _interpolate, _neighbours

    rng = np.random.default_rng(0)
    for _ in range(50):
        raw = rng.random((30, 31)) * 1000
        scale = float(np.exp(rng.uniform(-2.0, 1.4)))
        ys = (np.arange(max(1, round(30 * scale))) + 0.5) / scale - 0.5
        xs = (np.arange(max(1, round(31 * scale))) + 0.5) / scale - 0.5
        reference = ndimage.map_coordinates(raw, np.meshgrid(ys, xs, indexing="ij"), order=1, mode="nearest")
        out = np.empty((ys.size, xs.size))
        _interpolate(raw, _neighbours(ys, 30), _neighbours(xs, 31), out, 0)
        assert np.array_equal(out, reference)
