"""Intensity normalisation shared by training and the runtime, so both see the same intensities.

Cellpose maps the 1st and 99th percentiles to 0 and 1. That alone fails on real slides: in a sparse
or empty field the 99th percentile is background noise, which then gets the contrast of a nucleus.
`Normalization.from_sample` keeps Cellpose's rule where it works (a field covered by nuclei gives the
same numbers) and adds two guards:
- foreground-bearing blocks: the top percentile is taken over the BLOCK x BLOCK px blocks that hold
  structure (their 1st-99th percentile spread exceeds FOREGROUND_SIGMAS noise sigmas), so one patch of
  nuclei in an empty 2048 px field is normalised as the patch alone would be (cf. Cellpose's tile
  normalisation, but decided per slide, not per tile, so there are no seams);
- a noise floor: high - low is at least FLOOR_SIGMAS noise sigmas, so camera noise is never stretched
  to nucleus contrast (an empty field stays dark).
The noise sigma comes from first differences of neighbouring pixels (1.4826 MAD / sqrt 2), which
ignores smooth background and uneven illumination. The statistics are a function of the slide only
(never of a chunk), so chunked results still equal whole-image results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FLOOR_SIGMAS = 12.0
MISSING_FILL = 5  # px: a missing (NaN/Inf) pixel takes the mean of the finite pixels in this window
FOREGROUND_SIGMAS = 8.0  # pure noise: a 64 x 64 block spreads about 4.7 sigmas from p1 to p99
BLOCK = 64
MAD_TO_SIGMA = 1.4826


def noise_sigma(patches: Sequence[np.ndarray]) -> float:
    """Robust noise standard deviation of 2-D patches (same units as the pixels; 0.0 if unknown):
    the MAD of neighbour differences about their median (a smooth gradient only shifts them)."""
    deviations = []
    for patch in patches:
        p = np.asarray(patch, np.float32)
        if p.ndim != 2:
            continue
        for d in (np.diff(p, axis=0), np.diff(p, axis=1)):
            d = d[np.isfinite(d)]
            if d.size:
                deviations.append(np.abs(d - np.median(d)))
    if not deviations:
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.concatenate(deviations)) / np.sqrt(2.0))


@dataclass(frozen=True)
class Normalization:
    """Maps intensity `low` to 0 and `high` to 1; NaN/Inf pixels map to 0 (background). `noise`: the
    slide's noise sigma in normalised units (0.0 when unknown, e.g. a fixed norm_range)."""

    low: float
    high: float
    noise: float = 0.0

    @classmethod
    def from_sample(
        cls, sample: np.ndarray | Sequence[np.ndarray], lower: float = 1.0, upper: float = 99.0
    ) -> Normalization:
        """From a 2-D image or a list of 2-D patches of one slide (a 1-D array: percentiles only).
        `lower`/`upper` are percentiles in [0, 100]."""
        patches = [np.asarray(sample)] if isinstance(sample, np.ndarray) else [np.asarray(p) for p in sample]
        values = (
            np.concatenate([p.astype(np.float32, copy=False).ravel() for p in patches])
            if patches
            else np.empty(0)
        )
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0)
        low, high = (float(v) for v in np.percentile(values, [lower, upper]))
        sigma = noise_sigma(patches)
        if sigma > 0:
            bearing = _foreground_blocks(patches, FOREGROUND_SIGMAS * sigma)
            if bearing.size:
                high = float(np.percentile(bearing, upper))
            high = max(high, low + FLOOR_SIGMAS * sigma)
        if not high > low:
            high = low + 1.0
        return cls(low, high, sigma / (high - low) if sigma > 0 else 0.0)

    @classmethod
    def fixed(cls, low: float, high: float) -> Normalization:
        """A fixed intensity range (the `norm_range` option), for plates imaged with one setting."""
        from cyclepose_deploy.errors import OptionError

        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise OptionError(
                "norm_range", f"{{norm_range}} {low:g},{high:g} needs finite MIN < MAX, e.g. 100,4000"
            )
        return cls(float(low), float(high))

    def apply(self, image: np.ndarray) -> np.ndarray:
        scale = np.float32(1.0 / (self.high - self.low))
        out = (np.asarray(image, dtype=np.float32) - np.float32(self.low)) * scale
        out[~np.isfinite(out)] = 0.0  # missing data reads as background, never as a bright pixel
        return out


def fill_missing(raw: np.ndarray) -> np.ndarray:
    """Missing data (NaN, +/-Inf) in a raw float window: each missing pixel takes the mean of the
    finite pixels within MISSING_FILL px, so an isolated bad pixel changes nothing around it; pixels
    deeper inside a missing region stay non-finite and `Normalization.apply` maps them to background.
    (A missing pixel at the very edge of a window sees fewer neighbours than in the whole image.)"""
    from scipy import ndimage

    bad = ~np.isfinite(raw)
    if not bad.any():
        return raw
    good = (~bad).astype(np.float32)
    values = np.where(bad, 0.0, raw).astype(np.float32)
    total = ndimage.uniform_filter(values, MISSING_FILL, mode="constant")
    count = ndimage.uniform_filter(good, MISSING_FILL, mode="constant")
    out = raw.astype(np.float32, copy=True)
    fillable = bad & (count > 1e-6)
    out[fillable] = total[fillable] / count[fillable]
    return out


def _foreground_blocks(patches: Sequence[np.ndarray], spread: float) -> np.ndarray:
    """The finite pixels of the BLOCK x BLOCK blocks (smaller at patch edges) whose 1st-99th
    percentile spread exceeds `spread`: the parts of the sample that hold nuclei."""
    kept = []
    for patch in patches:
        p = np.asarray(patch, np.float32)
        if p.ndim != 2:
            p = p.reshape(1, -1)
        for y in range(0, p.shape[0], BLOCK):
            for x in range(0, p.shape[1], BLOCK):
                block = p[y : y + BLOCK, x : x + BLOCK].ravel()
                block = block[np.isfinite(block)]
                if block.size >= 16:
                    low, high = np.percentile(block, [1, 99])
                    if high - low > spread:
                        kept.append(block)
    return np.concatenate(kept) if kept else np.empty(0, np.float32)
