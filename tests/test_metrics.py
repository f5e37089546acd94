"""Instance matching against hand-computed cases, a brute-force reference, and a big image."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.metrics import match_instances
from cyclepose_deploy.synth.shapes import ShapePrior, pack_instances


def strip(*intervals: tuple[int, int, int], length: int = 24) -> np.ndarray:
    """A one-row label image from (label, start, stop) intervals, so IoUs are easy to compute by hand."""
    row = np.zeros((1, length), dtype=np.int32)
    for label, start, stop in intervals:
        row[0, start:stop] = label
    return row


def test_two_squares_hand_computed() -> None:
    pred = np.zeros((10, 10), np.uint16)
    pred[0:4, 0:4] = 1
    pred[5:9, 5:9] = 7
    gt = np.zeros((10, 10), np.int32)
    gt[0:4, 0:3] = 3  # IoU with pred 1: 12 / 16 = 0.75
    gt[6:9, 5:9] = 2  # IoU with pred 7: 12 / 16 = 0.75
    gt[0, 9] = 5  # missed
    result = match_instances(pred, gt)
    assert (result.n_pred, result.n_gt) == (2, 3)
    s = result.at(0.75)
    assert (s.tp, s.fp, s.fn) == (2, 0, 1)
    assert s.precision == 1.0 and s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(0.8) and s.ap == pytest.approx(2 / 3)
    assert result.at(0.8).tp == 0 and result.at(0.9).f1 == 0.0
    assert result.mean_ap == pytest.approx(6 * (2 / 3) / 10)
    assert result.mean_iou_matched == pytest.approx(0.75)


def test_low_threshold_needs_optimal_not_greedy_matching() -> None:
    # gt X = [0, 10), Y = [10, 20); pred B = [0, 3), A = [3, 15).
    # IoU(A, X) = 7/15, IoU(A, Y) = 5/17, IoU(B, X) = 3/10. Greedy by IoU takes A-X and leaves B and Y
    # unmatched; the optimal matching at 0.25 is A-Y and B-X.
    gt = strip((1, 0, 10), (2, 10, 20))
    pred = strip((9, 0, 3), (4, 3, 15))
    result = match_instances(pred, gt, thresholds=(0.25, 0.3, 0.5))
    assert result.at(0.25).tp == 2
    assert result.at(0.3).tp == 1  # A-Y (0.29) no longer qualifies
    assert result.at(0.5).tp == 0
    assert result.at(0.5).fp == 2 and result.at(0.5).fn == 2


def test_empty_images() -> None:
    empty = np.zeros((8, 8), np.uint8)
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert match_instances(empty, empty).at(0.5).f1 == 1.0
    s = match_instances(empty, one).at(0.5)
    assert (s.tp, s.fp, s.fn, s.f1, s.recall) == (0, 0, 1, 0.0, 0.0)
    s = match_instances(one, empty).at(0.5)
    assert (s.tp, s.fp, s.fn, s.f1, s.precision) == (0, 1, 0, 0.0, 0.0)


def test_huge_sparse_label_values_and_dtypes() -> None:
    gt = strip((1, 0, 5), (2, 6, 12))
    pred = np.zeros((1, 24), np.uint64)
    pred[0, 0:5] = 2**40 + 3
    pred[0, 6:11] = 2**63
    result = match_instances(pred, gt.astype(np.int8))
    assert result.n_pred == 2 and result.at(0.5).tp == 2 and result.at(0.9).tp == 1


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (np.zeros((4, 4), np.float32), "not integer labels"),
        (np.full((4, 4), -1, np.int16), "negative"),
        (np.zeros((4, 5), np.uint16), "differs"),
        (np.zeros((4, 4), bool), "not integer labels"),
    ],
)
def test_bad_inputs_raise_user_error(pred: np.ndarray, message: str) -> None:
    with pytest.raises(UserError, match=message):
        match_instances(pred, np.zeros((4, 4), np.uint16))


def brute_force_tp(pred: np.ndarray, gt: np.ndarray, threshold: float) -> int:
    """Dense IoU matrix and a maximum-cardinality assignment: the obvious but slow reference."""
    p_ids, g_ids = np.unique(pred[pred > 0]), np.unique(gt[gt > 0])
    iou = np.zeros((p_ids.size, g_ids.size))
    for i, p in enumerate(p_ids):
        for j, g in enumerate(g_ids):
            a, b = pred == p, gt == g
            iou[i, j] = (a & b).sum() / (a | b).sum()
    ok = iou >= threshold
    rows, cols = linear_sum_assignment(ok, maximize=True)
    return int(ok[rows, cols].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force_on_perturbed_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = pack_instances(rng, (96, 96), ShapePrior(diameter_min=8, diameter_max=16, coverage=0.5))
    pred = ndimage.grey_dilation(gt, size=3) if seed % 2 else gt.copy()
    pred = np.roll(pred, (1, 2), axis=(0, 1))
    ids = np.unique(gt[gt > 0])
    for a, b in rng.choice(ids, size=(4, 2), replace=False):  # merges make many-to-one overlaps
        pred[pred == b] = a
    thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
    result = match_instances(pred, gt, thresholds)
    for t in thresholds:
        assert result.at(t).tp == brute_force_tp(pred, gt, t), t


def test_tens_of_thousands_of_objects_fast() -> None:
    cells = np.arange(140 * 140, dtype=np.uint32).reshape(140, 140) + 1
    gt = np.kron(cells, np.ones((10, 10), np.uint32))
    gt[(np.arange(gt.shape[0]) % 10 >= 8), :] = 0
    gt[:, (np.arange(gt.shape[1]) % 10 >= 8)] = 0  # 19,600 squares of 8x8 with gaps
    pred = np.roll(gt, 1, axis=1)  # each shifted 1 px: IoU = 56 / 72 = 0.78
    start = time.perf_counter()
    result = match_instances(pred, gt, thresholds=(0.3, 0.5, 0.75, 0.8))
    elapsed = time.perf_counter() - start
    assert result.n_gt == 19600 and result.at(0.75).tp == 19600 and result.at(0.8).tp == 0
    assert result.at(0.3).tp == 19600
    assert elapsed < 10.0
