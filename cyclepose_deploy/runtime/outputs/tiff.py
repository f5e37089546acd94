"""Pass 2: map seed ids to labels 1..N block by block and stream them into a tiled, compressed
(OME) BigTIFF; the blocks also feed the object table and the preview."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TIFF_TILE = 256
BLOCK_COLS = 2048  # blocks of 256 x 2048: pass 2 memory does not grow with the slide's width
Block = tuple[int, int, np.ndarray]  # first row, first column, (rows, cols) array
BlockObserver = Callable[[int, int, np.ndarray], None]


def nearest_index(n_out: int, n_in: int, start: int, stop: int) -> np.ndarray:
    """Source indices on an n_in grid for output positions start..stop on an n_out grid (nearest)."""
    idx = ((np.arange(start, stop) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resampled_blocks(array: Any, out_shape: tuple[int, int], rows: int = TIFF_TILE) -> Iterator[Block]:
    """Row-major blocks of `array` (zarr, possibly on a rescaled grid) brought to `out_shape` (nearest)."""
    h, w = out_shape
    ah, aw = array.shape
    for r0 in range(0, h, rows):
        ys = nearest_index(h, ah, r0, min(r0 + rows, h))
        for c0 in range(0, w, BLOCK_COLS):
            xs = nearest_index(w, aw, c0, min(c0 + BLOCK_COLS, w))
            if ah > h or aw > w:  # downsampling (pyramid levels): read only the picked pixels, so a
                # block never spans 2^level times its own rows and columns of the source
                block = _pick(array, ys, xs)
            else:
                block = np.asarray(array[int(ys[0]) : int(ys[-1]) + 1, int(xs[0]) : int(xs[-1]) + 1])
                if block.shape != (ys.size, xs.size):
                    block = block[np.ix_(ys - ys[0], xs - xs[0])]
            yield r0, c0, block


def _pick(array: Any, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """array[ys][:, xs] (orthogonal indexing): zarr decodes chunk by chunk and keeps only the picks."""
    if hasattr(array, "oindex"):
        return np.asarray(array.oindex[ys, xs])
    return np.asarray(array)[np.ix_(ys, xs)]


PYRAMID_TOP = 1024  # sub-resolution levels halve the size until the longest side is at most this


def pyramid_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Shapes of the sub-resolution levels below `shape` (each half the previous, rounded up)."""
    shapes = []
    h, w = shape
    while max(h, w) > PYRAMID_TOP:
        h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w))
    return shapes


def label_blocks(ids: Any, table: np.ndarray, out_shape: tuple[int, int]) -> Iterator[Block]:
    """Seed ids -> labels 1..N (uint32) through the sorted id table."""
    for r0, c0, block in resampled_blocks(ids, out_shape):
        labels = np.searchsorted(table, block).astype(np.uint32) + 1
        labels[block == 0] = 0
        yield r0, c0, labels


def tiles_of(
    blocks: Iterator[Block], observers: Sequence[BlockObserver], tile: int = TIFF_TILE
) -> Iterator[np.ndarray]:
    """Row-major tiles (padded to tile x tile) as tifffile expects; observers see every block first."""
    for r0, c0, block in blocks:
        for observe in observers:
            observe(r0, c0, block)
        padded = np.zeros((tile, -(-block.shape[1] // tile) * tile), dtype=block.dtype)
        padded[: block.shape[0], : block.shape[1]] = block
        for x in range(0, padded.shape[1], tile):
            yield padded[:, x : x + tile]


def write_tiled_tiff(
    path: str | Path,
    blocks: Iterator[Block],
    shape: tuple[int, int],
    dtype: str,
    pixel_size: tuple[float, float] | None,
    observers: Sequence[BlockObserver] = (),
    levels: Sequence[tuple[Iterator[Block], tuple[int, int]]] = (),
) -> None:
    """A tiled, zlib-compressed OME BigTIFF written tile row by tile row (never whole in memory).
    levels: (blocks, shape) of each sub-resolution level, written as SubIFDs (an OME-TIFF pyramid
    that QuPath, napari and Bio-Formats open level by level)."""
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
            tiles_of(blocks, observers),
            shape=shape,
            dtype=np.dtype(dtype),
            tile=(TIFF_TILE, TIFF_TILE),
            compression="zlib",
            metadata=metadata,
            subifds=len(levels) or None,
        )
        for level_blocks, level_shape in levels:
            tif.write(
                tiles_of(level_blocks, ()),
                shape=level_shape,
                dtype=np.dtype(dtype),
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                subfiletype=1,
            )
