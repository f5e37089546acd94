"""Percentile normalisation shared by training and the runtime, so both see the same intensities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Maps intensity `low` to 0 and `high` to 1 (the image's 1st and 99th percentiles by default)."""

    low: float
    high: float

    @classmethod
    def from_sample(cls, sample: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> Normalization:
        values = np.asarray(sample, dtype=np.float32).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0)
        low, high = np.percentile(values, [lower, upper])
        if not high > low:
            high = low + 1.0
        return cls(float(low), float(high))

    def apply(self, image: np.ndarray) -> np.ndarray:
        scale = np.float32(1.0 / (self.high - self.low))
        out = (np.asarray(image, dtype=np.float32) - np.float32(self.low)) * scale
        return np.nan_to_num(out, copy=False)
