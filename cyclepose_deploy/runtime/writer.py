"""Pass 2: map seed ids to labels 1..N strip by strip and stream them into a tiled, compressed
(OME) BigTIFF; strips also feed the object table and the preview."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TIFF_TILE = 256
Strip = tuple[int, np.ndarray]  # first row, (rows, W) array
StripObserver = Callable[[int, np.ndarray], None]


def nearest_index(n_out: int, n_in: int, start: int, stop: int) -> np.ndarray:
    """Source indices on an n_in grid for output positions start..stop on an n_out grid (nearest)."""
    idx = ((np.arange(start, stop) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resampled_strips(array: Any, out_shape: tuple[int, int], rows: int = TIFF_TILE) -> Iterator[Strip]:
    """Strips of `array` (zarr, possibly on a rescaled grid) brought to `out_shape` by nearest sampling."""
    h, w = out_shape
    ah, aw = array.shape
    cols = nearest_index(w, aw, 0, w) if aw != w else None
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        src = nearest_index(h, ah, r0, r1) if ah != h else np.arange(r0, r1)
        block = np.asarray(array[int(src[0]) : int(src[-1]) + 1])[src - src[0]]
        yield r0, block if cols is None else block[:, cols]


def label_strips(ids: Any, table: np.ndarray, out_shape: tuple[int, int]) -> Iterator[Strip]:
    """Seed ids -> labels 1..N (uint32) through the sorted id table."""
    for r0, block in resampled_strips(ids, out_shape):
        labels = np.searchsorted(table, block).astype(np.uint32) + 1
        labels[block == 0] = 0
        yield r0, labels


def tiles_of(
    strips: Iterator[Strip], observers: Sequence[StripObserver], tile: int = TIFF_TILE
) -> Iterator[np.ndarray]:
    """Row-major tiles (padded to tile x tile) as tifffile expects; observers see every strip first."""
    for r0, strip in strips:
        for observe in observers:
            observe(r0, strip)
        padded = np.zeros((tile, -(-strip.shape[1] // tile) * tile), dtype=strip.dtype)
        padded[: strip.shape[0], : strip.shape[1]] = strip
        for c0 in range(0, padded.shape[1], tile):
            yield padded[:, c0 : c0 + tile]


def write_tiled_tiff(
    path: str | Path,
    strips: Iterator[Strip],
    shape: tuple[int, int],
    dtype: str,
    pixel_size: tuple[float, float] | None,
    observers: Sequence[StripObserver] = (),
) -> None:
    """A tiled, zlib-compressed OME BigTIFF written tile row by tile row (never whole in memory)."""
    import tifffile

    metadata: dict[str, Any] = {"axes": "YX"}
    if pixel_size is not None:
        metadata.update(
            PhysicalSizeY=pixel_size[0],
            PhysicalSizeX=pixel_size[1],
            PhysicalSizeYUnit="µm",
            PhysicalSizeXUnit="µm",
        )
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(
            tiles_of(strips, observers),
            shape=shape,
            dtype=np.dtype(dtype),
            tile=(TIFF_TILE, TIFF_TILE),
            compression="zlib",
            metadata=metadata,
        )
