"""The object table, accumulated block by block over the final labels, so nuclei that cross chunk
(or block) borders are merged by construction: one row per label."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.runtime.source.slide import Source

COLUMNS = (
    "label",
    "centroid_y",
    "centroid_x",
    "area",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "mean_intensity",
    "centroid_y_um",
    "centroid_x_um",
    "area_um2",
)


class ObjectTable:
    """Sums and extremes per label 1..N; `observe` takes a block of labels whose top-left is (r0, c0)."""

    def __init__(
        self, count: int, source: Source | None = None, pixel_size: tuple[float, float] | None = None
    ) -> None:
        """count: labels 1..count; source: the raw image for mean intensities; pixel_size: (y, x) µm
        for the µm columns (left empty when None)."""
        n = count + 1
        self.source, self.pixel_size = source, pixel_size
        self.area = np.zeros(n, np.int64)
        self.sum_y, self.sum_x, self.sum_i = (np.zeros(n, np.float64) for _ in range(3))
        self.y0, self.x0 = (np.full(n, np.iinfo(np.int64).max, np.int64) for _ in range(2))
        self.y1, self.x1 = (np.full(n, -1, np.int64) for _ in range(2))
        self.block_i = np.zeros(n, np.float64)  # one block's intensity sums (zero between blocks)

    def observe(self, r0: int, c0: int, labels: np.ndarray) -> None:
        labels = np.ascontiguousarray(labels)
        if self.source is not None:
            raw = self.source.read(r0, r0 + labels.shape[0], c0, c0 + labels.shape[1])
        else:
            raw = np.zeros((0, 0), np.float32)
        _accumulate(labels, raw, r0, c0, self.area, self.sum_y, self.sum_x, self.sum_i, self.block_i)
        _extents(labels, r0, c0, self.y0, self.y1, self.x0, self.x1)

    def rows(self) -> np.ndarray:
        """(K, 12) float64 rows for the labels that have pixels (COLUMNS; µm columns NaN if unknown)."""
        present = np.nonzero(self.area)[0]
        area = self.area[present].astype(np.float64)
        return np.column_stack(
            [
                present,
                self.sum_y[present] / area,
                self.sum_x[present] / area,
                area,
                self.y0[present],
                self.x0[present],
                self.y1[present],
                self.x1[present],
                self.sum_i[present] / area if self.source is not None else np.full(area.size, np.nan),
                *self._physical(self.sum_y[present] / area, self.sum_x[present] / area, area),
            ]
        )

    def _physical(self, cy: np.ndarray, cx: np.ndarray, area: np.ndarray) -> list[np.ndarray]:
        if self.pixel_size is None:
            return [np.full(area.size, np.nan)] * 3
        py, px = self.pixel_size
        return [cy * py, cx * px, area * py * px]

    def save_csv(self, path: str | Path) -> int:
        rows = self.rows()
        with atomic_path(path) as temp, open(temp, "w") as handle:
            handle.write(",".join(COLUMNS) + "\n")
            for row in rows:
                handle.write(
                    f"{int(row[0])},{row[1]:.2f},{row[2]:.2f},{int(row[3])},{int(row[4])},{int(row[5])},"
                    f"{int(row[6])},{int(row[7])},{row[8]:.7g},{_um(row[9], 3)},{_um(row[10], 3)},"
                    f"{_um(row[11], 4)}\n"
                )
        return len(rows)


@numba.njit(cache=True, nogil=True)
def _accumulate(
    labels: np.ndarray,
    raw: np.ndarray,
    r0: int,
    c0: int,
    area: np.ndarray,
    sum_y: np.ndarray,
    sum_x: np.ndarray,
    sum_i: np.ndarray,
    block_i: np.ndarray,
) -> None:
    """Add one block's pixel counts and coordinate and intensity sums per label (raw empty: no
    intensities). Coordinate sums are integers, exact in float64 in any order; intensity sums are
    made per block in row-major order and then added to every label's total, as
    `sum_i += np.bincount(labels, weights=raw)` did per block, so float slides get the same sums to
    the bit (block_i: zeros, returned zeroed)."""
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x]
            if k == 0:
                continue
            area[k] += 1
            sum_y[k] += np.float64(r0 + y)
            sum_x[k] += np.float64(c0 + x)
            if raw.size:
                block_i[k] += np.float64(raw[y, x])
    if raw.size:
        for k in range(sum_i.size):
            sum_i[k] += block_i[k]
            block_i[k] = 0.0


@numba.njit(cache=True, nogil=True)
def _extents(
    labels: np.ndarray, r0: int, c0: int, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray
) -> None:
    """Grow each label's bounding box (y0, x0 inclusive, y1, x1 exclusive) by one block."""
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x]
            if k != 0:
                y0[k] = min(y0[k], r0 + y)
                y1[k] = max(y1[k], r0 + y + 1)
                x0[k] = min(x0[k], c0 + x)
                x1[k] = max(x1[k], c0 + x + 1)


def _um(value: float, decimals: int) -> str:
    """A physical value in fixed point (0.001 µm for positions, 0.0001 µm² for areas, at any distance
    from the origin: significant digits would lose whole µm on a large slide), or an empty field
    (read as missing by pandas / R) when the pixel size is unknown."""
    return "" if not np.isfinite(value) else f"{value:.{decimals}f}"
