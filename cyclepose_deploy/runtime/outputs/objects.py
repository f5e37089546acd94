"""The object table, accumulated block by block over the final labels, so nuclei that cross chunk
(or block) borders are merged by construction: one row per label."""

from __future__ import annotations

from pathlib import Path

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

    def observe(self, r0: int, c0: int, labels: np.ndarray) -> None:
        ys, xs = np.nonzero(labels)
        if ys.size == 0:
            return
        lab = labels[ys, xs].astype(np.int64)
        if self.source is not None:
            raw = self.source.read(r0, r0 + labels.shape[0], c0, c0 + labels.shape[1])
            self.sum_i += np.bincount(lab, weights=raw[ys, xs], minlength=self.area.size)
        ys, xs = ys + r0, xs + c0
        n = self.area.size
        self.area += np.bincount(lab, minlength=n)
        self.sum_y += np.bincount(lab, weights=ys, minlength=n)
        self.sum_x += np.bincount(lab, weights=xs, minlength=n)
        np.minimum.at(self.y0, lab, ys)
        np.maximum.at(self.y1, lab, ys + 1)
        np.minimum.at(self.x0, lab, xs)
        np.maximum.at(self.x1, lab, xs + 1)

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
                    f"{int(row[6])},{int(row[7])},{row[8]:.4g},{_um(row[9])},{_um(row[10])},{_um(row[11])}\n"
                )
        return len(rows)


def _um(value: float) -> str:
    """A physical value, or an empty field (read as missing by pandas / R) when the size is unknown."""
    return "" if not np.isfinite(value) else f"{value:.4g}"
