"""Merger: blend tile outputs with the grid's taper weight into one window (MONAI's merger, in memory)."""

from __future__ import annotations

import numpy as np

from cyclepose_deploy.runtime.tiling.grid import TileGrid, Window


class Merger:
    """Accumulates weighted tile outputs over `window`; `finalize` divides by the summed weight.
    Sums are float64 (a float32 product is exact in float64), so the result does not depend on the
    order the tiles arrive in: chunks that reuse tiles agree with one whole-image run."""

    def __init__(self, grid: TileGrid, window: Window, channels: int = 3) -> None:
        self.grid, self.window = grid, window
        y0, y1, x0, x1 = window
        self.values = np.zeros((channels, y1 - y0, x1 - x0), dtype=np.float64)
        self.weights = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        self.finalized = False

    def _check_open(self) -> None:
        if self.finalized:
            raise RuntimeError("this Merger was finalized: its sums are gone; start a new Merger")

    def add(self, output: np.ndarray, origin: tuple[int, int]) -> None:
        """Add one tile's (C, T, T) output whose top-left is at global `origin`."""
        self._check_open()
        y0, y1, x0, x1 = self.window
        t = self.grid.tile
        ty, tx = origin
        oy0, oy1, ox0, ox1 = max(ty, y0), min(ty + t, y1), max(tx, x0), min(tx + t, x1)
        if oy1 <= oy0 or ox1 <= ox0:
            return
        w = self.grid.weight[oy0 - ty : oy1 - ty, ox0 - tx : ox1 - tx]
        tile = output[:, oy0 - ty : oy1 - ty, ox0 - tx : ox1 - tx]
        self.values[:, oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] += tile * w
        self.weights[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] += w

    def add_batch(self, outputs: np.ndarray, origins: list[tuple[int, int]]) -> None:
        for output, origin in zip(outputs, origins, strict=True):
            self.add(output, origin)

    def finalize(self) -> np.ndarray:
        """The blended (C, h, w) window; the weights are released (the merger takes no more tiles)."""
        self._check_open()
        self.finalized = True
        np.divide(self.values, np.maximum(self.weights, 1e-12), out=self.values)
        out = self.values.astype(np.float32)
        self.values, self.weights = np.empty((0, 0, 0)), np.empty((0, 0))
        return out
