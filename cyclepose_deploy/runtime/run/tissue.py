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

import numpy as np
from scipy import ndimage

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
    bright = ndimage.uniform_filter(image, size=size, mode="reflect") > empty_level(norm, lower)
    rows = []
    for by in range(0, bright.shape[0], TISSUE_BLOCK):
        for bx in range(0, bright.shape[1], TISSUE_BLOCK):
            if bright[by : by + TISSUE_BLOCK, bx : bx + TISSUE_BLOCK].any():
                rows.append(
                    (y0 + by, min(y0 + by + TISSUE_BLOCK, y1), x0 + bx, min(x0 + bx + TISSUE_BLOCK, x1))
                )
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
