"""Realistic, normalised network inputs for timing: what `cyclepose bench` and the benchmark suite feed
a runner, so data-dependent kernels see what a slide gives them, not zeros."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.synth.shapes import ShapePrior, pack_instances


def synthetic_tiles(batch: int, channels: int, tile: int, seed: int = 0) -> np.ndarray:
    """A normalised input batch (N, C, tile, tile) float32: blurred nuclei with texture and Poisson noise.
    Tile i is the same for every batch size (one generator, drawn in order)."""
    rng = np.random.default_rng(seed)
    out = np.empty((batch, channels, tile, tile), dtype=np.float32)
    for i in range(batch):
        labels = pack_instances(rng, (tile, tile), ShapePrior(coverage=0.3))
        brightness = rng.uniform(0.5, 1.0, int(labels.max()) + 1)
        brightness[0] = 0.0
        for c in range(channels):
            signal = brightness[labels] * (1.0 + 0.2 * rng.standard_normal(labels.shape))
            raw = 100.0 + 800.0 * ndimage.gaussian_filter(signal, 1.0)
            raw = rng.poisson(np.clip(raw, 0, None)).astype(np.float32)
            out[i, c] = Normalization.from_sample(raw).apply(raw)
    return out
