"""Verification of every artifact against the torch network on real tiles (a synthetic slide).

fp32 must match torch elementwise; fp16 and int8 are judged where it matters, on the instance masks
(F1 at IoU 0.5 against the masks of the reference outputs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cyclepose_deploy.export.compare import ArrayComparison, LabelComparison, compare_arrays, compare_labels
from cyclepose_deploy.runtime.backends.base import Runner


@dataclass(frozen=True)
class Thresholds:
    fp32_atol: float = 1e-4
    fp16_min_f1: float = 0.98
    int8_min_f1: float = 0.95

    def min_f1(self, precision: str) -> float:
        return self.fp16_min_f1 if precision == "fp16" else self.int8_min_f1


def run_tiles(runner: Runner, tiles: np.ndarray, batch: int) -> np.ndarray:
    """Outputs for all tiles, `batch` at a time, through an activated runner."""
    return np.concatenate([runner.infer(tiles[i : i + batch]) for i in range(0, len(tiles), batch)])


def tile_labels(outputs: np.ndarray, flow_scale: float) -> list[np.ndarray]:
    """Instance labels of each tile from (N, 3, H, W) network outputs, as the runtime computes them."""
    from cyclepose_deploy.runtime.dynamics import flows_to_labels

    return [
        flows_to_labels(np.ascontiguousarray(o[:2] / flow_scale), np.ascontiguousarray(o[2])) for o in outputs
    ]


@dataclass
class Reference:
    """The torch outputs on the verification tiles and their masks, computed once for all artifacts."""

    outputs: np.ndarray
    labels: list[np.ndarray]


def make_reference(runner: Runner, tiles: np.ndarray, batch: int, flow_scale: float) -> Reference:
    with runner:
        outputs = run_tiles(runner, tiles, batch)
    return Reference(outputs, tile_labels(outputs, flow_scale))


def verify_runner(
    runner: Runner, reference: Reference, tiles: np.ndarray, batch: int, flow_scale: float, limits: Thresholds
) -> ArrayComparison | LabelComparison:
    """fp32: elementwise against torch; fp16/int8: mask F1 against the reference masks."""
    with runner:
        outputs = run_tiles(runner, tiles, batch)
    name = runner.name
    if runner.precision == "fp32":
        return compare_arrays(name, reference.outputs, outputs, limits.fp32_atol)
    flows = compare_arrays(name, reference.outputs, outputs, None)
    labels = tile_labels(outputs, flow_scale)
    return compare_labels(name, reference.labels, labels, flows, limits.min_f1(runner.precision))
