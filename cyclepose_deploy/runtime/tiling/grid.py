"""One global tile grid with a taper weight: a pixel's blended output depends only on its position,
never on how the slide is cut into chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cyclepose_deploy.defaults import OVERLAP, TILE

Window = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `tile` px at stride tile - overlap; the first starts overlap // 2 before the image.
    tile and overlap come validated from runtime.tiling.options.Tiling."""

    shape: tuple[int, int]
    tile: int = TILE
    overlap: int = OVERLAP

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def offset(self) -> int:
        return self.overlap // 2

    def count(self, axis: int) -> int:
        """Tiles along an axis: enough that the last one reaches the image's end."""
        extra = self.shape[axis] + self.offset - self.tile
        return 1 + max(0, math.ceil(extra / self.stride))

    def span(self, axis: int, lo: int, hi: int) -> range:
        """Indices of the tiles along `axis` that overlap [lo, hi)."""
        first = max(0, (lo + self.offset - self.tile) // self.stride + 1)
        last = min(self.count(axis) - 1, (hi - 1 + self.offset) // self.stride)
        return range(first, last + 1)

    def origin(self, index: int) -> int:
        return index * self.stride - self.offset

    def tiles(self, window: Window) -> list[tuple[int, int]]:
        """Top-left corners (global, may be negative) of every tile that touches `window`, column by
        column: a fixed order per pixel, so tiles carried over from the chunk to the left (whole
        columns) blend bit-identically."""
        y0, y1, x0, x1 = window
        return [(self.origin(i), self.origin(j)) for j in self.span(1, x0, x1) for i in self.span(0, y0, y1)]

    def cover(self, tiles: list[tuple[int, int]]) -> Window:
        """The region these tiles read (may reach outside the image)."""
        ys = [t[0] for t in tiles]
        xs = [t[1] for t in tiles]
        return min(ys), max(ys) + self.tile, min(xs), max(xs) + self.tile

    @property
    def total(self) -> int:
        return self.count(0) * self.count(1)

    @cached_property
    def weight(self) -> np.ndarray:
        return taper(self.tile, self.overlap)


def taper(tile: int, overlap: int) -> np.ndarray:
    """Separable smoothstep over the overlap: tile borders, where the network sees zero padding,
    get almost no weight (1e-3, still positive so pixels that only one tile covers keep a value)."""
    if overlap == 0:
        return np.ones((tile, tile), np.float32)
    edge = np.minimum(np.arange(tile), np.arange(tile)[::-1]) + 0.5
    t = np.clip(edge / overlap, 0.0, 1.0)
    ramp = (t * t * (3.0 - 2.0 * t) + 1e-3) / (1.0 + 1e-3)
    return np.outer(ramp, ramp).astype(np.float32)
