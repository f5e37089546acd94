"""Comparisons are data (Polygraphy style): each returns a result that is truthy when it passes and
carries the statistics saved in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class _Verdict:
    """What every comparison shares: truthy when it passes, and the word the summary line ends with."""

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def verdict(self) -> str:
        return "ok" if self else "FAILED"


@dataclass(frozen=True)
class ArrayComparison(_Verdict):
    """Elementwise error of `candidate` against `reference`; passes when max abs <= atol (None: report)."""

    name: str
    atol: float | None
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float

    def __bool__(self) -> bool:
        return self.atol is None or bool(self.max_abs <= self.atol)

    def summary(self) -> str:
        return (
            f"{self.name}: max abs diff {self.max_abs:.3g} (limit {self.atol}), "
            f"p99 {self.p99_abs:.3g}: {self.verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "array", **asdict(self), "passed": self.passed}


def compare_arrays(
    name: str, reference: np.ndarray, candidate: np.ndarray, atol: float | None
) -> ArrayComparison:
    if reference.shape != candidate.shape:
        raise ValueError(f"{name}: shape {candidate.shape} differs from reference {reference.shape}")
    ref = reference.astype(np.float64)
    diff = np.abs(candidate.astype(np.float64) - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    return ArrayComparison(
        name=name,
        atol=atol,
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        p99_abs=float(np.quantile(diff, 0.99)),
        max_rel=float(rel.max()),
        mean_rel=float(rel.mean()),
        p99_rel=float(np.quantile(rel, 0.99)),
    )


@dataclass(frozen=True)
class LabelComparison(_Verdict):
    """Instance agreement of a candidate's masks with the reference's (F1 at IoU 0.5), plus flow error."""

    name: str
    min_f1: float
    f1: float
    n_reference: int
    n_candidate: int
    flows: ArrayComparison

    def __bool__(self) -> bool:
        return bool(self.f1 >= self.min_f1)

    def summary(self) -> str:
        return (
            f"{self.name}: mask F1@0.5 vs fp32 {self.f1:.4f} (limit {self.min_f1:g}; "
            f"{self.n_candidate} vs {self.n_reference} objects), "
            f"max flow diff {self.flows.max_abs:.3g}: {self.verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flows"] = self.flows.to_dict()
        return {"kind": "labels", **data, "passed": self.passed}


def compare_labels(
    name: str, reference: list[np.ndarray], candidate: list[np.ndarray], flows: ArrayComparison, min_f1: float
) -> LabelComparison:
    """Pool TP/FP/FN over all tiles, then F1 = 2TP / (2TP + FP + FN)."""
    from cyclepose_deploy.metrics import match_instances

    tp = fp = fn = n_ref = n_cand = 0
    for ref, cand in zip(reference, candidate, strict=True):
        scores = match_instances(cand, ref, thresholds=(0.5,)).at(0.5)
        tp, fp, fn = tp + scores.tp, fp + scores.fp, fn + scores.fn
        n_ref, n_cand = n_ref + scores.tp + scores.fn, n_cand + scores.tp + scores.fp
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return LabelComparison(name, min_f1, float(f1), n_ref, n_cand, flows)
