"""Skip empty space: which chunks hold tissue, decided before any network work.

A chunk core is *empty* when no 8x8 px box mean of its normalised image (at the working scale, where
nuclei are about the model's trained diameter, so a nucleus fills such a box) rises EMPTY_LEVEL above
the background. The background's normalised level is where the low percentile puts it: the
percentile sits z noise sigmas below the background mean (z = 2.33 for the 1st percentile), so the
level is EMPTY_LEVEL + (z + EMPTY_NOISE_SIGMAS / 8) sigma, the last term keeping the box mean of pure
camera noise (its sigma is 1/8 of the pixels') below it. The box mean is the low-resolution view: it
keeps nuclei (they fill the box) and averages noise down. Tissue is located to 256 px blocks, and a
chunk is run when a block with tissue lies in its window (core + halo), so a nucleus poking into an
empty core from a neighbour is still segmented whole (its bright part lies in a block at the border,
within the halo). Objects fainter than EMPTY_LEVEL could hardly pass the dynamics' contrast check
(defaults.MIN_CONTRAST = 0.1) anyway.

The decision is a pure function of the slide and the normalisation, the same for every scheduler, so
skipping never makes the single-process and the distributed run differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numba
import numpy as np

from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import Source
from cyclepose_deploy.runtime.tiling.chunks import Chunk

BOX = 8  # px at the working scale: the low-resolution view's pixel
TISSUE_BLOCK = 256  # px: tissue is located to blocks this size, so a chunk runs only for tissue in reach
EMPTY_LEVEL = 0.05  # normalised intensity (1 = bright nucleus): half the contrast an object must have
EMPTY_NOISE_SIGMAS = 6.0  # sigmas of an 8x8 mean of the slide's noise


def empty_level(norm: Normalization, lower: float) -> float:
    """The normalised box-mean intensity above which a core holds tissue; `lower`: the percentile
    that the normalisation maps to 0 (0..100)."""
    z = NormalDist().inv_cdf(1.0 - min(max(lower, 0.01), 50.0) / 100.0)
    return EMPTY_LEVEL + norm.noise * (z + EMPTY_NOISE_SIGMAS / BOX)


def tissue_blocks(source: Source, norm: Normalization, chunk: Chunk, lower: float) -> np.ndarray:
    """The TISSUE_BLOCK px blocks of the chunk's core that hold anything brighter than the empty
    level (module docstring): (k, 4) int64 rows (y0, y1, x0, x1) in slide px, k = 0 for an empty core.
    Reads the core once (float32, core-sized memory)."""
    y0, y1, x0, x1 = chunk.core
    image = norm.apply(np.asarray(source.read(y0, y1, x0, x1), np.float32))
    size = min(BOX, *image.shape)
    bright = _bright_blocks(image, size, empty_level(norm, lower))
    rows = []
    for by, bx in zip(*np.nonzero(bright), strict=True):
        top, left = y0 + int(by) * TISSUE_BLOCK, x0 + int(bx) * TISSUE_BLOCK
        rows.append((top, min(top + TISSUE_BLOCK, y1), left, min(left + TISSUE_BLOCK, x1)))
    return np.array(rows, np.int64).reshape(-1, 4)


def chunks_to_run(chunks: Sequence[Chunk], blocks: Sequence[np.ndarray]) -> list[bool]:
    """Per chunk: run it when any block with tissue (of any core) lies in its window."""
    found = np.concatenate([np.asarray(b, np.int64).reshape(-1, 4) for b in blocks] or [np.zeros((0, 4))])
    out = []
    for chunk in chunks:
        wy0, wy1, wx0, wx1 = chunk.window
        overlap = (found[:, 0] < wy1) & (wy0 < found[:, 1]) & (found[:, 2] < wx1) & (wx0 < found[:, 3])
        out.append(bool(overlap.any()))
    return out


def _bright_blocks(image: np.ndarray, size: int, level: float) -> np.ndarray:
    """(ny, nx) bool: whether scipy's uniform_filter(image, size, mode='reflect') exceeds `level`
    somewhere in each TISSUE_BLOCK px block.

    scipy's box means (running sums, rounded to float32 after each axis) lie within 1e-6 of the
    image's largest magnitude of the exact means, which numba computes here in float64
    (`_block_box_max`); a block whose exact maximum is that far from the level is decided without
    scipy. Only when some block is closer does scipy filter the core, as before."""
    from scipy import ndimage

    block_max = _block_box_max(image, size, TISSUE_BLOCK)
    margin = 1e-6 * max(1.0, float(image.max()), -float(image.min()))
    if not np.all(np.abs(block_max - level) > margin):
        bright = ndimage.uniform_filter(image, size=size, mode="reflect") > level
        decided = np.zeros(block_max.shape, bool)
        for by, bx in np.ndindex(*decided.shape):
            window = bright[
                by * TISSUE_BLOCK : (by + 1) * TISSUE_BLOCK, bx * TISSUE_BLOCK : (bx + 1) * TISSUE_BLOCK
            ]
            decided[by, bx] = window.any()
        return decided
    return block_max > level


@numba.njit(cache=True, nogil=True)
def _reflect(i: int, n: int) -> int:
    """Index i of a line of n px extended in scipy's 'reflect' mode (period 2n)."""
    i = i % (2 * n)
    return i if i < n else 2 * n - 1 - i


@numba.njit(cache=True, nogil=True)
def _block_box_max(image: np.ndarray, size: int, block: int) -> np.ndarray:
    """Per block x block px block, the largest mean over the size x size box of each of its pixels
    (float64, boxes reaching beyond the image reflected as scipy reflects them; the box of pixel i
    spans i - size // 2 .. i - size // 2 + size - 1 on each axis). The box sums along x of the last
    `size` rows stay in a ring (no image-sized float64 array), and every loop over x runs on
    contiguous rows."""
    ly, lx = image.shape
    before = size // 2
    ring = np.empty((size, lx), np.float64)  # box sums along x of source row r in slot r % size
    held = np.full(size, -1, np.int64)
    line = np.empty(lx + size - 1, np.float64)
    total = np.empty(lx, np.float64)
    out = np.full(((ly + block - 1) // block, (lx + block - 1) // block), -np.inf)
    for y in range(ly):
        total[:] = 0.0
        for k in range(size):
            r = _reflect(y - before + k, ly)
            if held[r % size] != r:
                _row_box_sums(image[r], before, size, line, ring[r % size])
                held[r % size] = r
            sums = ring[r % size]
            for x in range(lx):
                total[x] += sums[x]
        best = out[y // block]
        for bx in range(best.size):
            top = -np.inf  # the largest sum, then one division (monotone, so the largest mean)
            for x in range(bx * block, min(lx, (bx + 1) * block)):
                top = max(top, total[x])
            best[bx] = max(best[bx], top / (size * size))
    return out


@numba.njit(cache=True, nogil=True)
def _row_box_sums(row: np.ndarray, before: int, size: int, line: np.ndarray, sums: np.ndarray) -> None:
    """sums[x] = the sum of row[x - before .. x - before + size - 1] (reflected), in float64."""
    lx = row.size
    for x in range(lx):
        line[x + before] = np.float64(row[x])
    for i in range(before):
        line[i] = np.float64(row[_reflect(i - before, lx)])
    for i in range(lx + before, lx + size - 1):
        line[i] = np.float64(row[_reflect(i - before, lx)])
    sums[:] = 0.0
    for k in range(size):
        shifted = line[k : k + lx]
        for x in range(lx):
            sums[x] += shifted[x]
