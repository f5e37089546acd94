"""Pass 2: map seed ids to labels 1..N block by block and stream them into a tiled, compressed
(OME) BigTIFF; the blocks also feed the object table and the preview.

Speed: ids become labels in one numba pass (`_labels_of`); tiles are deflated on a small thread pool
with zlib-ng when imagecodecs has it (a standard zlib stream, about twice zlib's speed at the same
level) while the next blocks are made; when the labels are on the slide's own grid, the pyramid levels
are picked from the level-0 blocks as they pass (`PyramidSpool`) instead of decoding the ids again
for every level.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numba
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
        yield r0, c0, _labels_of(np.ascontiguousarray(block), table)


@numba.njit(cache=True, nogil=True)
def _labels_of(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint32 1 + np.searchsorted(table, ids) (side 'left'), 0 where the id is 0. A pixel with the
    same id as the pixel before it (most pixels: objects are runs) reuses its label."""
    out = np.zeros(ids.shape, np.uint32)
    flat, labels = ids.ravel(), out.ravel()
    last_id, last_label = np.uint64(0), np.uint32(0)
    for i in range(flat.size):
        v = flat[i]
        if v != last_id:
            lo, hi = 0, table.size  # first index with table[index] >= v
            while lo < hi:
                mid = (lo + hi) // 2
                if table[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            last_id, last_label = v, np.uint32(lo + 1)
        if v != 0:
            labels[i] = last_label
    return out


@numba.njit(cache=True, nogil=True)
def _pick_into(out: np.ndarray, labels: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
    """out[i, j] = labels[ys[i], xs[j]] (labels[np.ix_(ys, xs)] without the index arrays numpy builds).
    out: (len(ys), len(xs)) view of a level (a memmap), labels: (h, w) of the same dtype (uint32),
    ys / xs: int64 rows / columns of labels."""
    for i in range(ys.size):
        row, dst = labels[ys[i]], out[i]
        for j in range(xs.size):
            dst[j] = row[xs[j]]


class PyramidSpool:
    """The sub-resolution levels of labels on the slide's own grid, picked from the level-0 blocks as
    they stream by (`observe`) and kept in .npy files in `folder` until the TIFF writer asks for them
    (`blocks`), after level 0. Level k's pixel (i, j) is level 0's (nearest_index rows i, columns j),
    as label_blocks(ids, table, shape) of the level picks them from ids on that grid."""

    def __init__(self, folder: str | Path, shape: tuple[int, int], shapes: Sequence[tuple[int, int]]) -> None:
        self.paths = [Path(folder) / f"pyramid-{k}.npy" for k in range(len(shapes))]
        self.levels = [
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint32, shape=level)
            for path, level in zip(self.paths, shapes, strict=True)
        ]
        self.picks = [(nearest_index(h, shape[0], 0, h), nearest_index(w, shape[1], 0, w)) for h, w in shapes]

    def observe(self, r0: int, c0: int, labels: np.ndarray) -> None:
        for level, (ys, xs) in zip(self.levels, self.picks, strict=True):
            i0, i1 = np.searchsorted(ys, [r0, r0 + labels.shape[0]])
            j0, j1 = np.searchsorted(xs, [c0, c0 + labels.shape[1]])
            if i1 > i0 and j1 > j0:
                _pick_into(level[i0:i1, j0:j1], labels, ys[i0:i1] - r0, xs[j0:j1] - c0)

    def blocks(self, k: int) -> Iterator[Block]:
        """Level k in the blocks label_blocks would give (TIFF_TILE rows, BLOCK_COLS columns)."""
        level = self.levels[k]
        for r0 in range(0, level.shape[0], TIFF_TILE):
            for c0 in range(0, level.shape[1], BLOCK_COLS):
                yield r0, c0, np.array(level[r0 : r0 + TIFF_TILE, c0 : c0 + BLOCK_COLS])

    def close(self) -> None:
        """Drop the spooled levels (after the TIFF is written, or on failure)."""
        for level in self.levels:
            level._mmap.close()  # type: ignore[attr-defined]
        self.levels = []
        for path in self.paths:
            path.unlink(missing_ok=True)


def tiles_of(
    blocks: Iterator[Block],
    observers: Sequence[BlockObserver],
    tile: int = TIFF_TILE,
    dtype: np.dtype | None = None,
) -> Iterator[np.ndarray]:
    """Row-major tiles (padded to tile x tile) as tifffile expects, in `dtype` (default: the
    blocks'; the caller makes sure the values fit); observers see every block first."""
    for r0, c0, block in blocks:
        for observe in observers:
            observe(r0, c0, block)
        padded = np.zeros((tile, -(-block.shape[1] // tile) * tile), dtype=dtype or block.dtype)
        padded[: block.shape[0], : block.shape[1]] = block
        for x in range(0, padded.shape[1], tile):
            yield padded[:, x : x + tile]


def encoded(tiles: Iterator[np.ndarray], workers: int) -> Iterator[bytes]:
    """The tiles as zlib streams, in order, deflated on `workers` threads (zlib-ng, which releases the
    GIL, when imagecodecs has it; else zlib at its default level) with a few tiles in flight."""
    encode = getattr(imagecodecs, "zlibng_encode", None) or imagecodecs.zlib_encode
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque[Future[bytes]] = collections.deque()
        for tile in tiles:
            pending.append(pool.submit(encode, np.ascontiguousarray(tile), 6))
            if len(pending) > 2 * workers + 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
    that QuPath, napari and Bio-Formats open level by level). Tiles are deflated here (`encoded`) and
    handed to tifffile as finished segments."""
    import tifffile

    metadata: dict[str, Any] = {"axes": "YX"}
    if pixel_size is not None:
        metadata.update(
            PhysicalSizeY=pixel_size[0],
            PhysicalSizeX=pixel_size[1],
            PhysicalSizeYUnit="µm",
            PhysicalSizeXUnit="µm",
        )
    workers = min(2, len(os.sched_getaffinity(0)))
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(
            encoded(tiles_of(blocks, observers, dtype=np.dtype(dtype)), workers),
            shape=shape,
            dtype=np.dtype(dtype),
            tile=(TIFF_TILE, TIFF_TILE),
            compression="zlib",
            metadata=metadata,
            subifds=len(levels) or None,
        )
        for level_blocks, level_shape in levels:
            tif.write(
                encoded(tiles_of(level_blocks, (), dtype=np.dtype(dtype)), workers),
                shape=level_shape,
                dtype=np.dtype(dtype),
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                subfiletype=1,
            )
