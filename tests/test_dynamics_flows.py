"""labels_to_flows against a line-by-line numpy transcription of Cellpose 3's masks_to_flows_cpu."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.dynamics import labels_to_flows
from cyclepose_deploy.synth.shapes import ShapePrior, pack_instances


def _cellpose_reference(masks: np.ndarray) -> np.ndarray:
    """Cellpose 3 masks_to_flows_cpu (median centre, padded box, 2*(ly+lx) Jacobi steps), in numpy."""
    mu = np.zeros((2, *masks.shape), np.float64)
    for i, box in enumerate(ndimage.find_objects(masks)):
        if box is None:
            continue
        sr, sc = box
        ly, lx = sr.stop - sr.start + 2, sc.stop - sc.start + 2
        y, x = np.nonzero(masks[sr, sc] == i + 1)
        y, x = y + 1, x + 1
        ymed, xmed = np.median(y), np.median(x)
        imin = np.argmin((x - xmed) ** 2 + (y - ymed) ** 2)
        ymed, xmed = y[imin], x[imin]
        heat = np.zeros(ly * lx)
        for _ in range(2 * (ly + lx)):
            heat[ymed * lx + xmed] += 1
            around = [heat[(y + dy) * lx + x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            heat[y * lx + x] = sum(around) / 9.0
        dy = heat[(y + 1) * lx + x] - heat[(y - 1) * lx + x]
        dx = heat[y * lx + x + 1] - heat[y * lx + x - 1]
        mu[:, sr.start + y - 1, sc.start + x - 1] = np.stack((dy, dx))
    return mu / (1e-60 + np.sqrt((mu**2).sum(axis=0)))


def test_matches_cellpose_reference() -> None:
    labels = pack_instances(np.random.default_rng(1), (160, 192), ShapePrior(coverage=0.5))
    assert labels.max() > 20
    ours = labels_to_flows(labels)
    reference = _cellpose_reference(labels.astype(np.int64))
    assert ours.dtype == np.float32 and ours.shape == (2, 160, 192)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    assert np.all(ours[:, labels == 0] == 0)
    norm = np.sqrt((ours**2).sum(axis=0))[labels > 0]
    assert np.abs(norm - 1).max() < 1e-5


def test_label_values_need_not_be_consecutive() -> None:
    labels = pack_instances(np.random.default_rng(2), (96, 96))
    sparse = np.where(labels > 0, labels.astype(np.uint64) * 1_000_003 + 7, 0)
    np.testing.assert_array_equal(labels_to_flows(sparse), labels_to_flows(labels))


def test_flows_point_to_the_centre_of_a_disk() -> None:
    yy, xx = np.mgrid[:41, :41]
    disk = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2).astype(np.int32)
    flows = labels_to_flows(disk)
    assert flows[0, 8, 20] > 0.99 and flows[0, 32, 20] < -0.99
    assert flows[1, 20, 8] > 0.99 and flows[1, 20, 32] < -0.99


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (7, 9)])
def test_empty_and_background(shape: tuple[int, int]) -> None:
    flows = labels_to_flows(np.zeros(shape, np.uint16))
    assert flows.shape == (2, *shape) and not flows.any()


def test_single_pixel_and_full_image() -> None:
    one = np.zeros((5, 5), np.int32)
    one[2, 2] = 3
    assert not labels_to_flows(one).any()
    full = labels_to_flows(np.ones((12, 10), np.int32))
    assert np.isfinite(full).all() and np.abs(np.sqrt((full**2).sum(0)) - 1).max() < 1e-5


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3, 3), np.int32), np.zeros((3, 3), np.float32), -np.ones((3, 3), np.int64)]
)
def test_rejects_bad_labels(bad: np.ndarray) -> None:
    with pytest.raises(UserError):
        labels_to_flows(bad)
