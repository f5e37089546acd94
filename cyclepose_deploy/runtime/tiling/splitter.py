"""Splitter: the tiles of one window, read once from the slide, normalised and padded, in batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import Source
from cyclepose_deploy.runtime.tiling.grid import TileGrid, Window


@dataclass
class TileBatch:
    """A network batch (N, C, TH, TW) (the grid's sides) and the global top-left of each tile in it."""

    images: np.ndarray
    origins: list[tuple[int, int]]


def read_padded(source: Source, norm: Normalization, region: Window) -> np.ndarray:
    """Normalised region; the part outside the slide is 0 (the normalised background)."""
    y0, y1, x0, x1 = region
    h, w = source.shape
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if cy1 > cy0 and cx1 > cx0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = norm.apply(source.read(cy0, cy1, cx0, cx1))
    return out


def split(
    source: Source,
    norm: Normalization,
    grid: TileGrid,
    window: Window,
    batch: int,
    channels: int = 1,
    skip: frozenset[tuple[int, int]] = frozenset(),
) -> Iterator[TileBatch]:
    """Yield the batches of tiles covering `window` (less `skip`); their region is read only once."""
    origins = [o for o in grid.tiles(window) if o not in skip]
    if not origins:
        return
    cover = grid.cover(origins)
    region = read_padded(source, norm, cover)
    th, tw = grid.sides
    for start in range(0, len(origins), batch):
        part = origins[start : start + batch]
        images = np.zeros((len(part), channels, th, tw), dtype=np.float32)
        for k, (ty, tx) in enumerate(part):
            images[k, 0] = region[ty - cover[0] : ty - cover[0] + th, tx - cover[2] : tx - cover[2] + tw]
        yield TileBatch(images, part)
