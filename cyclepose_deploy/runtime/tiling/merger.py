"""Merger: blend tile outputs with the grid's taper weight into one window (MONAI's merger, in memory)."""

from __future__ import annotations

import numba
import numpy as np

from cyclepose_deploy.runtime.tiling.grid import TileGrid, Window


class BlendBuffers:
    """Reusable memory for the Mergers of one worker, one chunk after the other: the float64 sums and
    weights and the float32 results (one per slot) of the largest window seen so far. A fresh array of
    100+ MB costs a page fault per 4 KiB page on first touch (about a third of the blend's time on a
    2048 px chunk); reused memory does not. The sums are handed out zeroed: `_divide` zeroes them as
    it reads them (cheaper than a separate pass); after a Merger that never finalized they are zeroed
    again. A window finalized into a slot lives there until the next Merger finalizes into the same
    slot: the threaded pipeline (runtime.run.pipeline) finalizes chunks into two slots in turn, so the
    next chunk is blended while the dynamics read the previous one. Used by one thread at a time."""

    def __init__(self) -> None:
        self.sums = np.zeros(0, np.float64)
        self.weights = np.zeros(0, np.float64)
        self.results: list[np.ndarray] = []
        self.clean = True  # sums and weights are all zero

    @staticmethod
    def _take(
        pool: np.ndarray, shape: tuple[int, ...], grow: object = np.empty
    ) -> tuple[np.ndarray, np.ndarray]:
        """A C-contiguous view of `shape` on `pool`, grown first if too small (returns the pool too)."""
        size = int(np.prod(shape))
        if pool.size < size:
            pool = grow(size, pool.dtype)  # type: ignore[operator]
        return pool, pool[:size].reshape(shape)

    def sums_for(self, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed (C, h, w) sums and (h, w) weights."""
        if not self.clean:
            self.sums.fill(0.0)
            self.weights.fill(0.0)
        self.sums, sums = self._take(self.sums, shape, np.zeros)
        self.weights, weights = self._take(self.weights, shape[1:], np.zeros)
        self.clean = False
        return sums, weights

    def result_for(self, shape: tuple[int, int, int], slot: int = 0) -> np.ndarray:
        """A (C, h, w) float32 view on the memory of `slot` (0, 1, ...; a new slot starts empty)."""
        while len(self.results) <= slot:
            self.results.append(np.empty(0, np.float32))
        self.results[slot], result = self._take(self.results[slot], shape)
        return result


class Merger:
    """Accumulates weighted tile outputs over `window`; `finalize` divides by the summed weight.
    Sums are float64 (a float32 product is exact in float64), so the result does not depend on the
    order the tiles arrive in: chunks that reuse tiles agree with one whole-image run.
    buffers: memory shared with the previous Mergers of the same worker (BlendBuffers); None: its own.
    """

    def __init__(
        self, grid: TileGrid, window: Window, channels: int = 3, buffers: BlendBuffers | None = None
    ) -> None:
        self.grid, self.window = grid, window
        y0, y1, x0, x1 = window
        self.buffers = buffers or BlendBuffers()
        self.values, self.weights = self.buffers.sums_for((channels, y1 - y0, x1 - x0))
        self.finalized = False

    def _check_open(self) -> None:
        if self.finalized:
            raise RuntimeError("this Merger was finalized: its sums are gone; start a new Merger")

    def add(self, output: np.ndarray, origin: tuple[int, int]) -> None:
        """Add one tile's (C, TH, TW) output (grid.sides) whose top-left is at global `origin`."""
        self._check_open()
        y0, y1, x0, x1 = self.window
        th, tw = self.grid.sides
        ty, tx = origin
        oy0, oy1, ox0, ox1 = max(ty, y0), min(ty + th, y1), max(tx, x0), min(tx + tw, x1)
        if oy1 <= oy0 or ox1 <= ox0:
            return
        w = self.grid.weight[oy0 - ty : oy1 - ty, ox0 - tx : ox1 - tx]
        tile = output[:, oy0 - ty : oy1 - ty, ox0 - tx : ox1 - tx]
        _accumulate(
            self.values[:, oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0],
            self.weights[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0],
            tile,
            w,
        )

    def add_batch(self, outputs: np.ndarray, origins: list[tuple[int, int]]) -> None:
        for output, origin in zip(outputs, origins, strict=True):
            self.add(output, origin)

    def finalize(self, slot: int = 0) -> np.ndarray:
        """The blended (C, h, w) float32 window; the weights are released (the merger takes no more
        tiles). With shared buffers, the window stays valid until the next Merger on them finalizes
        into the same `slot` (BlendBuffers)."""
        self._check_open()
        self.finalized = True
        out = self.buffers.result_for(self.values.shape, slot)
        _divide(self.values, self.weights, out)
        self.buffers.clean = True
        self.values, self.weights = np.empty((0, 0, 0)), np.empty((0, 0))
        return out


@numba.njit(cache=True, nogil=True)
def _accumulate(values: np.ndarray, weights: np.ndarray, tile: np.ndarray, weight: np.ndarray) -> None:
    """values (C, h, w) float64 += float32 product tile * weight; weights (h, w) float64 += weight.

    The same arithmetic as numpy's `values += tile * w` (the product rounded to float32, then added in
    float64), row by row over contiguous views so that the loops vectorise."""
    for y in range(weight.shape[0]):
        w_row, acc = weight[y], weights[y]
        for x in range(w_row.size):
            acc[x] += np.float64(w_row[x])
        for c in range(tile.shape[0]):
            t_row, v_row = tile[c, y], values[c, y]
            for x in range(w_row.size):
                v_row[x] += np.float64(t_row[x] * w_row[x])


@numba.njit(cache=True, nogil=True)
def _divide(values: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """out (C, h, w) float32 = values / max(weights, 1e-12) in float64, rounded once to float32; values
    and weights are zeroed as they are read (ready for the next Merger on the same buffers)."""
    for c in range(values.shape[0]):
        for y in range(values.shape[1]):
            v_row, w_row, o_row = values[c, y], weights[y], out[c, y]
            for x in range(v_row.size):
                o_row[x] = np.float32(v_row[x] / max(w_row[x], 1e-12))
                v_row[x] = 0.0
    for y in range(weights.shape[0]):
        weights[y] = 0.0
