"""The CPU side's numba kernels equal, bit for bit, the numpy/scipy code they replaced (issue #23: not a
single label may change): local window filters, exact percentiles and medians, the tissue test, the
blend, the label mapping and the object table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cyclepose_deploy.runtime.dynamics import local
from cyclepose_deploy.runtime.outputs.objects import ObjectTable
from cyclepose_deploy.runtime.outputs.tiff import _labels_of
from cyclepose_deploy.runtime.run import tissue
from cyclepose_deploy.runtime.source import normalize
from cyclepose_deploy.runtime.tiling.grid import TileGrid
from cyclepose_deploy.runtime.tiling.merger import BlendBuffers, Merger

SHAPES = [(1, 1), (1, 7), (3, 2), (5, 9), (9, 4), (17, 33), (64, 80)]


def same(a: object, b: object) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("shape", SHAPES)
def test_window_filters_equal_scipy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    image = (rng.normal(size=shape) * 3).astype(np.float32)
    assert same(local.gaussian(image, 1.0), ndimage.gaussian_filter(image, 1.0))
    labels = rng.integers(0, 5, size=shape).astype(np.int32)
    for radius in (1, 2, 3, 5):
        assert same(local.window_max(labels, radius), ndimage.grey_dilation(labels, size=2 * radius + 1))


def test_percentiles_and_medians_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    for kind in range(3):
        n = int(rng.integers(normalize.GRID_MIN_VALUES, 3 * normalize.GRID_MIN_VALUES))
        values = [
            rng.integers(0, 65536, n),
            rng.poisson(300.0, n),
            rng.integers(0, 4, n),
        ][kind].astype(np.float32)
        for q in ([1.0, 99.0], [0.5, 99.9], float(rng.uniform(0, 100)), [float(rng.uniform(0, 100))]):
            assert same(normalize._percentile(values, q), np.percentile(values, q)), (kind, q)


def test_noise_and_normalisation_equal_numpy() -> None:
    rng = np.random.default_rng(1)
    slide = rng.poisson(120.0, size=(600, 500)).astype(np.float32)
    slide[200:260, 100:170] += 900.0
    noisy = rng.normal(size=(80, 90)).astype(np.float32)  # not on the integer grid: numpy's path
    with_nan = slide.copy()
    with_nan[5, 7] = np.nan
    for patches in ([slide], [slide[:96, :96], slide[300:396, 7:103]], [noisy], [with_nan], [slide[:1, :4]]):
        deviations = []
        for p in patches:
            for d in (np.diff(p, axis=0), np.diff(p, axis=1)):
                d = d[np.isfinite(d)]
                if d.size:
                    deviations.append(np.abs(d - np.median(d)))
        expected = float(1.4826 * np.median(np.concatenate(deviations)) / np.sqrt(2.0)) if deviations else 0.0
        assert normalize.noise_sigma(patches) == expected
    for spread in (0.0, 50.0, 400.0, 1e6):
        kept = []
        for y in range(0, 600, 64):
            for x in range(0, 500, 64):
                block = slide[y : y + 64, x : x + 64].ravel()
                low, high = np.percentile(block, [1, 99])
                if high - low > spread:
                    kept.append(block)
        expected = np.sort(np.concatenate(kept)) if kept else np.empty(0, np.float32)
        assert same(np.sort(normalize._foreground_blocks([slide], spread)), expected)


def test_tissue_test_equals_scipy_box_filter() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 0.02, size=(700, 600)).astype(np.float32)
    image[300:320, 200:220] += 0.2
    box = ndimage.uniform_filter(image, size=8, mode="reflect")
    for level in (
        0.05,
        float(box.max()),
        float(np.nextafter(box.max(), np.float32(0))),
        float(box[310, 210]),
    ):
        expected = np.array(
            [
                [(box[y : y + 256, x : x + 256] > level).any() for x in range(0, 600, 256)]
                for y in range(0, 700, 256)
            ]
        )
        assert same(tissue._bright_blocks(image, 8, level), expected)


def test_blend_equals_numpy_reference() -> None:
    rng = np.random.default_rng(3)
    grid = TileGrid((700, 650), 128, 32)
    buffers = BlendBuffers()
    for window in [(0, 700, 0, 650), (37, 500, 101, 640)]:
        values = np.zeros((4, window[1] - window[0], window[3] - window[2]))
        weights = np.zeros(values.shape[1:])
        merger = Merger(grid, window, 4, buffers)
        for ty, tx in grid.tiles(window):
            out = (rng.normal(size=(4, 128, 128)) * rng.choice([1e-5, 1.0, 30.0])).astype(np.float32)
            merger.add(out, (ty, tx))
            y0, y1 = max(ty, window[0]), min(ty + 128, window[1])
            x0, x1 = max(tx, window[2]), min(tx + 128, window[3])
            w = grid.weight[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
            region = (slice(y0 - window[0], y1 - window[0]), slice(x0 - window[2], x1 - window[2]))
            values[(slice(None), *region)] += out[:, y0 - ty : y1 - ty, x0 - tx : x1 - tx] * w
            weights[region] += w
        expected = (values / np.maximum(weights, 1e-12)).astype(np.float32)
        assert same(merger.finalize(), expected)


def test_label_mapping_and_object_table_equal_numpy() -> None:
    rng = np.random.default_rng(4)
    table = np.unique(rng.integers(1, 2**40, 300).astype(np.uint64))
    ids = rng.choice(np.concatenate([table, [0, 0, 0]]), size=(120, 90)).astype(np.uint64)
    expected = np.searchsorted(table, ids).astype(np.uint32) + 1
    expected[ids == 0] = 0
    assert same(_labels_of(ids, table), expected)

    class Raw:
        shape = ids.shape

        def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return raw[y0:y1, x0:x1]

    raw = (rng.normal(size=ids.shape) * 100).astype(np.float32)
    table_out = ObjectTable(table.size, Raw(), (0.5, 0.5))
    area = np.zeros(table.size + 1, np.int64)
    sum_i = np.zeros(table.size + 1)
    for r0 in range(0, 120, 50):
        block = expected[r0 : r0 + 50]
        table_out.observe(r0, 0, block)
        area += np.bincount(block.ravel(), minlength=table.size + 1)
        sum_i += np.bincount(block.ravel(), weights=raw[r0 : r0 + 50].ravel(), minlength=table.size + 1)
    rows = table_out.rows()
    present = np.nonzero(area[1:])[0] + 1
    assert same(rows[:, 0], present.astype(np.float64))
    assert same(rows[:, 3], area[present].astype(np.float64))
    assert same(rows[:, 8], sum_i[present] / area[present])
