"""Instance matching by IoU: precision, recall, F1 and AP (TP / (TP + FP + FN)) at IoU thresholds.

Overlaps are counted sparsely (only label pairs that actually touch), so images with tens of
thousands of objects stay fast. Above IoU 0.5 a match is unique, so every candidate pair is a match;
at 0.5 and below, an optimal one-to-one matching is solved per connected group of candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cyclepose_deploy.errors import UserError

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
REPORT_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Scores:
    """Counts and metrics at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def ap(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "iou": self.threshold,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "ap": self.ap,
        }


def _ratio(num: int, den: int) -> float:
    """num/den, with 0/0 = 1.0: nothing predicted and nothing to find is a perfect result."""
    return float(num) / den if den else 1.0


@dataclass(frozen=True)
class MatchResult:
    """Per-threshold matching results; `at(0.5).f1` is the headline figure."""

    n_pred: int
    n_gt: int
    scores: tuple[Scores, ...]
    mean_iou_matched: float  # over the pairs matched at the lowest threshold

    def at(self, threshold: float) -> Scores:
        for s in self.scores:
            if abs(s.threshold - threshold) < 1e-9:
                return s
        have = ", ".join(f"{s.threshold:g}" for s in self.scores)
        raise KeyError(f"IoU threshold {threshold:g} was not evaluated; evaluated: {have}")

    def f1(self, threshold: float = 0.5) -> float:
        return self.at(threshold).f1

    @property
    def mean_ap(self) -> float:
        """AP averaged over the evaluated thresholds in [0.5, 0.95] (nan when there are none)."""
        values = [s.ap for s in self.scores if 0.5 - 1e-9 <= s.threshold <= 0.95 + 1e-9]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "n_pred": self.n_pred,
            "n_gt": self.n_gt,
            "mean_ap_50_95": self.mean_ap,
            "mean_iou_matched": self.mean_iou_matched,
            "thresholds": [s.to_dict() for s in self.scores],
        }


def check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Accept any integer label image with non-negative values; refuse floats and negatives."""
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{name} has {labels.dtype} pixels, not integer labels: pass an instance label image")
    if labels.ndim != 2:
        raise UserError(f"{name} has shape {labels.shape}, not a 2-D label image: pass one plane")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise UserError(f"{name} holds negative labels: labels must be 0 (background) or positive ids")
    return labels


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber labels to 0..n (0 stays background) so bincount sizes follow the object count."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top < 4 * flat.size + 1024:
        present = np.bincount(flat.astype(np.int64, copy=False), minlength=top + 1) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return lut[flat].astype(np.int64), int(present.sum() - 1)
    values, inverse = np.unique(flat, return_inverse=True)
    if values[0] != 0:
        inverse = inverse + 1
    return inverse.astype(np.int64).ravel(), int(np.count_nonzero(values))


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Candidate pairs (pred index, gt index, IoU) over the object pairs that share pixels."""
    p, n_pred = _dense_ids(pred)
    g, n_gt = _dense_ids(gt)
    area_p = np.bincount(p, minlength=n_pred + 1)
    area_g = np.bincount(g, minlength=n_gt + 1)
    both = (p > 0) & (g > 0)
    keys, inter = np.unique(p[both] * (n_gt + 1) + g[both], return_counts=True)
    pi, gi = np.divmod(keys, n_gt + 1)
    iou = inter / (area_p[pi] + area_g[gi] - inter)
    return pi - 1, gi - 1, iou, n_pred, n_gt


def _count_matches(
    pi: np.ndarray, gi: np.ndarray, iou: np.ndarray, n_pred: int, n_gt: int
) -> tuple[int, float]:
    """Size of a maximum one-to-one matching over the candidate pairs (ties broken by higher IoU),
    and the IoU sum of the matched pairs."""
    if pi.size == 0:
        return 0, 0.0
    if np.unique(pi).size == pi.size and np.unique(gi).size == gi.size:
        return int(pi.size), float(iou.sum())
    graph = coo_matrix((np.ones(pi.size), (pi, n_pred + gi)), shape=(n_pred + n_gt,) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[pi]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    total, iou_sum = 0, 0.0
    for edges in np.split(order, bounds):
        if edges.size == 1:
            total, iou_sum = total + 1, iou_sum + float(iou[edges[0]])
            continue
        n, s = _solve_component(pi[edges], gi[edges], iou[edges])
        total, iou_sum = total + n, iou_sum + s
    return total, iou_sum


def _solve_component(pi: np.ndarray, gi: np.ndarray, iou: np.ndarray) -> tuple[int, float]:
    rows, r = np.unique(pi, return_inverse=True)
    cols, c = np.unique(gi, return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    ious = np.zeros_like(weight)
    n_min = min(rows.size, cols.size)
    weight[r, c] = 1.0 + iou / (2.0 * n_min)  # the count of matches dominates, IoU breaks ties
    ious[r, c] = iou
    ri, ci = linear_sum_assignment(weight, maximize=True)
    chosen = weight[ri, ci] > 0
    return int(chosen.sum()), float(ious[ri, ci][chosen].sum())


def match_instances(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> MatchResult:
    """Match predicted to ground-truth instances one-to-one at each IoU threshold (a pair matches
    when IoU >= threshold) and count TP, FP and FN."""
    pred = check_labels(pred, "prediction")
    gt = check_labels(gt, "ground truth")
    if pred.shape != gt.shape:
        raise UserError(
            f"prediction shape {pred.shape} differs from ground truth {gt.shape}: compare the same image"
        )
    pi, gi, iou, n_pred, n_gt = _overlaps(pred, gt)
    scores, mean_iou = [], []
    for t in sorted(float(t) for t in thresholds):
        keep = iou >= t - 1e-12
        tp, iou_sum = _count_matches(pi[keep], gi[keep], iou[keep], n_pred, n_gt)
        scores.append(Scores(round(t, 6), tp, n_pred - tp, n_gt - tp))
        mean_iou.append(iou_sum / tp if tp else float("nan"))
    return MatchResult(n_pred, n_gt, tuple(scores), mean_iou[0] if mean_iou else float("nan"))
