"""Intensity normalisation shared by training and the runtime, so both see the same intensities.

Cellpose maps the 1st and 99th percentiles to 0 and 1. That alone fails on real slides: in a sparse
or empty field the 99th percentile is background noise, which then gets the contrast of a nucleus.
`Normalization.from_sample` keeps Cellpose's rule where it works (fields where nuclei cover more than
a few per cent of the pixels are unchanged) and adds two guards:
- foreground: the top is at least the median of the pixels clearly above background (more than
  FOREGROUND_SIGMAS noise sigmas above the low percentile), so a few nuclei set it, not the noise;
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
FOREGROUND_SIGMAS = 6.0
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
    """Maps intensity `low` to 0 and `high` to 1; NaN/Inf pixels map to 0 (background)."""

    low: float
    high: float

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
            foreground = values[values > low + FOREGROUND_SIGMAS * sigma]
            if foreground.size:
                high = max(high, float(np.median(foreground)))
            high = max(high, low + FLOOR_SIGMAS * sigma)
        if not high > low:
            high = low + 1.0
        return cls(low, high)

    @classmethod
    def fixed(cls, low: float, high: float) -> Normalization:
        """A fixed intensity range (`--norm-range MIN,MAX`), for plates imaged with one setting."""
        from cyclepose_deploy.errors import UserError

        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise UserError(f"--norm-range {low:g},{high:g} needs finite MIN < MAX, e.g. 100,4000")
        return cls(float(low), float(high))

    def apply(self, image: np.ndarray) -> np.ndarray:
        scale = np.float32(1.0 / (self.high - self.low))
        out = (np.asarray(image, dtype=np.float32) - np.float32(self.low)) * scale
        out[~np.isfinite(out)] = 0.0  # missing data reads as background, never as a bright pixel
        return out
