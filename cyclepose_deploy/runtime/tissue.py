"""Skip empty space: which chunks hold tissue, decided before any network work.

A chunk core is *empty* when no 8x8 px box mean of its normalised image (at the working scale, where
nuclei are about the model's trained diameter, so a nucleus fills such a box) rises EMPTY_LEVEL above
the background. The background's normalised level is where the low percentile puts it: the
percentile sits z noise sigmas below the background mean (z = 2.33 for the 1st percentile), so the
level is EMPTY_LEVEL + (z + EMPTY_NOISE_SIGMAS / 8) sigma, the last term keeping the box mean of pure
camera noise (its sigma is 1/8 of the pixels') below it. The box mean is the low-resolution view: it
keeps nuclei (they fill the box) and averages noise down. A chunk is run when any core its window
(core + halo) touches holds tissue, so a nucleus poking into an empty core from a neighbour is still
segmented whole. Objects fainter than EMPTY_LEVEL could hardly pass the dynamics' contrast check
(defaults.MIN_CONTRAST = 0.1) anyway.

The decision is a pure function of the slide and the normalisation, the same for every scheduler, so
skipping never makes the single-process and the distributed run differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from scipy import ndimage

from cyclepose_deploy.runtime.chunks import Chunk
from cyclepose_deploy.runtime.normalize import Normalization
from cyclepose_deploy.runtime.slide import Source

BOX = 8  # px at the working scale: the low-resolution view's pixel
EMPTY_LEVEL = 0.05  # normalised intensity (1 = bright nucleus): half the contrast an object must have
EMPTY_NOISE_SIGMAS = 6.0  # sigmas of an 8x8 mean of the slide's noise


def empty_level(norm: Normalization, lower: float) -> float:
    """The normalised box-mean intensity above which a core holds tissue; `lower`: the percentile
    that the normalisation maps to 0 (0..100)."""
    z = NormalDist().inv_cdf(1.0 - min(max(lower, 0.01), 50.0) / 100.0)
    return EMPTY_LEVEL + norm.noise * (z + EMPTY_NOISE_SIGMAS / BOX)


def core_has_tissue(source: Source, norm: Normalization, chunk: Chunk, lower: float) -> bool:
    """True when the chunk's core holds anything brighter than the empty level (module docstring).
    Reads the core once (float32, core-sized memory)."""
    y0, y1, x0, x1 = chunk.core
    image = norm.apply(np.asarray(source.read(y0, y1, x0, x1), np.float32))
    size = min(BOX, *image.shape)
    means = ndimage.uniform_filter(image, size=size, mode="reflect")
    return bool(means.max() > empty_level(norm, lower))


def chunks_to_run(chunks: Sequence[Chunk], tissue: Sequence[bool]) -> list[bool]:
    """Per chunk: run it when any core that its window overlaps holds tissue."""
    flagged = [c.core for c, t in zip(chunks, tissue, strict=True) if t]
    out = []
    for chunk in chunks:
        wy0, wy1, wx0, wx1 = chunk.window
        out.append(any(y0 < wy1 and wy0 < y1 and x0 < wx1 and wx0 < x1 for y0, y1, x0, x1 in flagged))
    return out
