"""Synthetic slides: deterministic, whole nuclei across band borders, realistic statistics, and the
streamed file equal to the in-memory slide in bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from cyclepose_deploy.synth.shapes import ShapePrior
from cyclepose_deploy.synth.slide import BAND, make_slide, write_slide


@pytest.fixture(scope="module")
def slide() -> tuple[np.ndarray, np.ndarray]:
    return make_slide(2 * BAND + 100, 384, seed=3)  # three bands, the last one partial


def test_types_and_determinism(slide: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = slide
    assert image.dtype == np.uint16 and labels.dtype == np.uint32
    assert image.shape == labels.shape == (2 * BAND + 100, 384)
    again = make_slide(2 * BAND + 100, 384, seed=3)
    assert np.array_equal(again[0], image) and np.array_equal(again[1], labels)
    other = make_slide(2 * BAND + 100, 384, seed=4)
    assert not np.array_equal(other[1], labels)


def test_every_nucleus_is_one_connected_piece(slide: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = slide
    ids = np.unique(labels[labels > 0])
    assert ids.size > 300
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            assert ndimage.label(labels[box] == k)[1] == 1, f"label {k} is split"
    crossing = np.intersect1d(labels[BAND - 1], labels[BAND])
    assert crossing[crossing > 0].size > 3  # nuclei do straddle the band border


def test_no_seam_at_band_borders(slide: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = slide
    steps = np.abs(np.diff(image.astype(np.float64), axis=0)).mean(axis=1)
    for border in (BAND, 2 * BAND):
        assert steps[border - 1] < np.percentile(steps, 99), "band border stands out"


def test_looks_like_nuclei(slide: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = slide
    inside = np.array(ndimage.mean(image, labels, np.unique(labels[labels > 0])))
    back = np.median(image[ndimage.binary_dilation(labels > 0, iterations=6) == 0])
    assert 100 < back < 300  # low offset background
    signal = inside - back
    assert np.median(signal) > 10 * (back - 100)
    assert 2.5 < np.percentile(signal, 90) / np.percentile(signal, 10) < 12  # brightness varies
    assert 0.01 < np.mean(signal < 0.35 * np.median(signal)) < 0.12  # a few dim nuclei
    areas = np.bincount(labels.ravel())[1:]
    diameters = 2 * np.sqrt(areas[areas > 0] / np.pi)
    assert 10 < np.median(diameters) < 30
    assert 0.2 < np.mean(labels > 0) < 0.45


def test_diameter_prior_is_respected() -> None:
    _, labels = make_slide(256, 256, seed=1, prior=ShapePrior(diameter_min=6, diameter_max=8))
    areas = np.bincount(labels.ravel())[1:]
    diameters = 2 * np.sqrt(areas[areas > 0] / np.pi)
    assert np.median(diameters) < 9 and diameters.max() < 14


@pytest.mark.parametrize(
    "prior",
    [ShapePrior(), ShapePrior(diameter_max=20, max_aspect=4.0, deformation=0.25), ShapePrior(max_aspect=1.0)],
)
def test_max_extent_bounds_every_nucleus(prior: ShapePrior) -> None:
    """The runtime sizes its chunk halo from this bound: no nucleus may be longer (Feret diameter of its
    pixel centres, + 1 px), even at the largest diameter and elongation the prior draws."""
    from scipy.spatial.distance import pdist

    from cyclepose_deploy.synth.shapes import nucleus_mask

    rng = np.random.default_rng(11)
    bound, longest = prior.max_extent(), 0.0
    for _ in range(150):
        mask = nucleus_mask(rng, prior.diameter_max, prior.max_aspect, prior.deformation)
        edge = mask & ~ndimage.binary_erosion(mask)
        points = np.argwhere(edge).astype(float)
        longest = max(longest, float(pdist(points).max()) + 1.0 if len(points) > 1 else 1.0)
    assert prior.diameter_max * np.sqrt(prior.max_aspect) < longest <= bound


def test_file_equals_memory_and_keeps_pixel_size(tmp_path: Path) -> None:
    image, labels = make_slide(BAND + 300, 300, seed=7)
    out, gt = tmp_path / "s.tif", tmp_path / "gt.tif"
    count = write_slide(out, gt, BAND + 300, 300, seed=7, pixel_size=0.5)
    assert count == labels.max()
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and tif.is_ome and tif.pages[0].is_tiled
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        assert np.array_equal(tif.asarray(), image)
    assert np.array_equal(tifffile.imread(gt), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.tif", "s.tif"]


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    def fail(done: int, total: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        write_slide(tmp_path / "s.tif", tmp_path / "gt.tif", 3 * BAND, 64, seed=0, on_band=fail)
    assert list(tmp_path.iterdir()) == []


def _peak_bytes(tmp_path: Path, height: int) -> int:
    tracemalloc.start()
    write_slide(tmp_path / f"s{height}.tif", tmp_path / f"gt{height}.tif", height, 64, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_height(tmp_path: Path) -> None:
    short, tall = _peak_bytes(tmp_path, 2 * BAND), _peak_bytes(tmp_path, 12 * BAND)
    assert tall < 2 * short, (short, tall)  # six times the rows, not six times the memory
