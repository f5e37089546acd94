"""One global tile grid with a taper weight: a pixel's blended output depends only on its position,
never on how the slide is cut into chunks.

An image whose padded extent fits WHOLE_PIXELS runs as one tile of its own shape (`TileGrid.plan`):
fully convolutional, S needs no tiles there, and a 520 x 696 field is 0.44 MPix of network work as one
tile against 0.79 MPix as twelve 256 px tiles (Cellpose's 224 px tiles: 0.60), with no seams."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cyclepose_deploy.defaults import OVERLAP, SIZE_MULTIPLE, TILE

Window = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)
# Largest single tile (px, padded): four of them (batch mode's concurrent fields) stay within
# limits.MAX_BATCH_PIXELS; on a 2-core Xeon int8 S runs 1.45 MPix/s at 1024^2 against 1.58 at 8 x 256^2.
WHOLE_PIXELS = 1 << 20
# Largest fitted tile side (px). Fitting the side to the image cuts the network pixels of a 2144^2
# working grid from 6.55 (100 tiles of 256) to 5.38 MPix (25 of 464): less overlap, less padding past
# its end. Speed per pixel varies with the side, not monotonically (benchmarks/bench_tile_sides.py,
# int8 S on the 2-core Xeon: 1.29 MPix/s at 256, 1.48-1.50 at 384-480, 1.27 at 496 and 512), so the
# rule counts pixels and stops at 480: on the 2048^2 slide at 17.4 px (a 2347^2 grid) 49 tiles of
# 368 px (6.64 MPix) ran 0.6 s faster than 25 of 512 (6.55 MPix; medians of 3 interleaved runs).
FIT_MAX_TILE = 480


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `tile` px (`size`: (height, width) px when not square) at stride tile - overlap; the
    first starts overlap // 2 before the image. tile and overlap come validated from
    runtime.tiling.options.Tiling."""

    shape: tuple[int, int]
    tile: int = TILE
    overlap: int = OVERLAP
    size: tuple[int, int] | None = None

    @classmethod
    def plan(cls, shape: tuple[int, int], tile: int, overlap: int, whole_image: bool, chunk: int) -> TileGrid:
        """The run's grid: one tile of the image's own padded shape (overlap // 2 of zero padding on
        every side, rounded up to SIZE_MULTIPLE) when `whole_image`, it fits WHOLE_PIXELS and the
        image is one chunk (`chunk` px; chunks cut smaller would each run the whole tile); else, with
        `whole_image`, square tiles of the side from `tile` to min(FIT_MAX_TILE, chunk) px that covers
        the image with the fewest network pixels (fitted_tile; a `tile` above that is kept), without it
        square tiles of `tile` px. The grid depends on the image's shape and these settings, never on
        a chunk, so chunked labels equal whole-image labels on the square grids."""
        side = [-(-(n + 2 * (overlap // 2)) // SIZE_MULTIPLE) * SIZE_MULTIPLE for n in shape]
        if whole_image and side[0] * side[1] <= WHOLE_PIXELS and max(shape) <= chunk:
            return cls(shape, max(side), overlap, (side[0], side[1]))
        if whole_image:
            return cls(shape, fitted_tile(shape, tile, overlap, chunk), overlap)
        return cls(shape, tile, overlap)

    @property
    def sides(self) -> tuple[int, int]:
        """(height, width) px of every tile."""
        return self.size if self.size is not None else (self.tile, self.tile)

    @property
    def stride(self) -> int:
        """px between square tiles (step(axis) for either shape)."""
        return self.step(0)

    @property
    def offset(self) -> int:
        return self.overlap // 2

    def step(self, axis: int) -> int:
        """px between tiles along `axis`."""
        return self.sides[axis] - self.overlap

    def count(self, axis: int) -> int:
        """Tiles along an axis: enough that the last one reaches the image's end."""
        extra = self.shape[axis] + self.offset - self.sides[axis]
        return 1 + max(0, math.ceil(extra / self.step(axis)))

    def span(self, axis: int, lo: int, hi: int) -> range:
        """Indices of the tiles along `axis` that overlap [lo, hi)."""
        first = max(0, (lo + self.offset - self.sides[axis]) // self.step(axis) + 1)
        last = min(self.count(axis) - 1, (hi - 1 + self.offset) // self.step(axis))
        return range(first, last + 1)

    def origin(self, index: int, axis: int = 0) -> int:
        return index * self.step(axis) - self.offset

    def tiles(self, window: Window) -> list[tuple[int, int]]:
        """Top-left corners (global, may be negative) of every tile that touches `window`, column by
        column: a fixed order per pixel, so tiles carried over from the chunk to the left (whole
        columns) blend bit-identically."""
        y0, y1, x0, x1 = window
        return [
            (self.origin(i, 0), self.origin(j, 1)) for j in self.span(1, x0, x1) for i in self.span(0, y0, y1)
        ]

    def cover(self, tiles: list[tuple[int, int]]) -> Window:
        """The region these tiles read (may reach outside the image)."""
        ys = [t[0] for t in tiles]
        xs = [t[1] for t in tiles]
        th, tw = self.sides
        return min(ys), max(ys) + th, min(xs), max(xs) + tw

    @property
    def total(self) -> int:
        return self.count(0) * self.count(1)

    @cached_property
    def weight(self) -> np.ndarray:
        return taper(self.sides[0], self.overlap, self.sides[1])


def fitted_tile(shape: tuple[int, int], tile: int, overlap: int, chunk: int) -> int:
    """The square tile side from `tile` to min(FIT_MAX_TILE, chunk) px (multiples of SIZE_MULTIPLE)
    whose grid over `shape` has the fewest network pixels (tiles x side^2); ties: the smallest."""
    sides = range(tile, max(tile, min(FIT_MAX_TILE, chunk)) + 1, SIZE_MULTIPLE)

    def pixels(side: int) -> int:
        grid = TileGrid(shape, side, overlap)
        return grid.total * side * side

    return min(sides, key=lambda side: (pixels(side), side))


def taper(tile: int, overlap: int, width: int | None = None) -> np.ndarray:
    """(tile, width or tile) float32: a separable smoothstep over the overlap: tile borders, where the
    network sees zero padding, get almost no weight (1e-3, still positive so pixels that only one tile
    covers keep a value)."""
    return np.outer(_ramp(tile, overlap), _ramp(tile if width is None else width, overlap)).astype(np.float32)


def _ramp(length: int, overlap: int) -> np.ndarray:
    if overlap == 0:
        return np.ones(length)
    edge = np.minimum(np.arange(length), np.arange(length)[::-1]) + 0.5
    t = np.clip(edge / overlap, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t) + 1e-3) / (1.0 + 1e-3)
