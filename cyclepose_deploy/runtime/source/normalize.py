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
ignores smooth background and uneven illumination; for integer pixels it is at least the rounding
noise, 1/sqrt(12) DN. The statistics are a function of the slide only
(never of a chunk), so chunked results still equal whole-image results.

Speed: the percentiles and medians are numpy's, to the bit, but found from counts when the values lie
on a grid (integer pixels of uint8/uint16 slides, their differences, and those differences' deviations
from a median, multiples of 1/2): a histogram pass finds the order statistics numpy's partition would
put at the interpolated ranks, and numpy itself interpolates between them (`_percentile`). Anything
else (float slides) takes numpy's partition. The blocks' 1st/99th percentiles come from one numba pass
per block that keeps only the few smallest and largest values (`_bearing_blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

FLOOR_SIGMAS = 12.0
# integer pixels are never noiseless: rounding alone spreads them by 1/sqrt(12) DN. A flat, quantised
# background (8-bit fields of a few nuclei) measures sigma 0, which turned both guards off, so the
# 99th percentile fell on the background and the nuclei saturated.
QUANTIZATION_SIGMA = float(1 / np.sqrt(12.0))
MISSING_FILL = 5  # px: a missing (NaN/Inf) pixel takes the mean of the finite pixels in this window
FOREGROUND_SIGMAS = 8.0  # pure noise: a 64 x 64 block spreads about 4.7 sigmas from p1 to p99
BLOCK = 64
MAD_TO_SIGMA = 1.4826
GRID_BINS = 1 << 22  # at most this many histogram bins (32 MiB of counts) for exact order statistics
GRID_MIN_VALUES = 1 << 15  # smaller samples: numpy's partition is as fast
BLOCK_PERCENTILES = (1, 99)  # the spread of a block: its 1st to 99th percentile


def noise_sigma(patches: Sequence[np.ndarray]) -> float:
    """Robust noise standard deviation of 2-D patches (same units as the pixels; 0.0 if unknown):
    the MAD of neighbour differences about their median (a smooth gradient only shifts them)."""
    planes = [np.ascontiguousarray(patch, np.float32) for patch in patches if np.ndim(patch) == 2]
    counted = _noise_from_counts(planes)
    if counted is not None:
        return counted
    deviations = []
    for p in planes:
        for d in (np.diff(p, axis=0), np.diff(p, axis=1)):
            d = d[np.isfinite(d)]
            if d.size:
                deviations.append(np.abs(d - np.median(d)))
    if not deviations:
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.concatenate(deviations)) / np.sqrt(2.0))


def _noise_from_counts(planes: list[np.ndarray]) -> float | None:
    """noise_sigma's number from counts of the neighbour differences, when they are all integers (no
    array of differences is made); None otherwise. Per plane and axis, the median m of the differences
    comes from their counts; each difference d then counts at |d - m| (exact in float32: integers and
    halves), and the median of all those deviations comes from the merged counts."""
    merged: list[tuple[np.ndarray, np.ndarray]] = []
    for p in planes:
        if p.size < 2:
            continue
        low, high = float(p.min()), float(p.max())  # differences lie in +-(high - low)
        if not (np.isfinite(low) and np.isfinite(high)) or 2 * (high - low) >= GRID_BINS:
            return None
        for axis in (0, 1):
            counts = _diff_counts(p, axis, low - high, int(2 * (high - low)) + 1)
            if counts.size == 0:
                return None
            if counts.sum() == 0:
                continue
            values = (low - high + np.arange(counts.size)).astype(np.float32)
            median = _median_of_counts(counts, values)
            merged.append((np.abs(values - median), counts))
    if not merged:
        return 0.0
    deviations = np.concatenate([d for d, _ in merged])
    steps = np.rint(deviations * 2).astype(np.int64)  # deviations are multiples of 1/2
    total = np.bincount(steps, weights=np.concatenate([c for _, c in merged]).astype(np.float64))
    values = (np.arange(total.size) / 2).astype(np.float32)
    sigma = float(MAD_TO_SIGMA * _median_of_counts(total.astype(np.int64), values) / np.sqrt(2.0))
    return max(sigma, QUANTIZATION_SIGMA)


def _median_of_counts(counts: np.ndarray, values: np.ndarray) -> np.floating:
    """np.median of the multiset holding values[k] counts[k] times (values ascending): numpy's mean of
    the middle order statistic(s)."""
    n = int(counts.sum())
    middle = np.array([n // 2 - 1, n // 2] if n % 2 == 0 else [n // 2], np.int64)
    return np.median(values[np.searchsorted(np.cumsum(counts), middle, side="right")])


@numba.njit(cache=True, nogil=True)
def _diff_counts(plane: np.ndarray, axis: int, low: float, bins: int) -> np.ndarray:
    """Counts of the finite float32 differences of neighbours along `axis` at low + k; empty when one
    is not an integer. Consecutive pixels count into four interleaved tables (summed at the end), so
    equal neighbours do not wait on each other's increment."""
    counts = np.zeros((4, bins), np.int64)
    ly, lx = plane.shape
    dy, dx = (1, 0) if axis == 0 else (0, 1)
    for y in range(ly - dy):
        ahead, here = plane[y + dy, dx:], plane[y, : lx - dx]
        for x in range(here.size):
            d = ahead[x] - here[x]
            if np.isfinite(d):
                step = np.float64(d) - low
                k = int(step)
                if k != step or k < 0 or k >= bins:
                    return np.zeros(0, np.int64)
                counts[x & 3, k] += 1
    return counts.sum(axis=0)


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
        planes = [np.ascontiguousarray(p, np.float32) for p in patches]
        if not any(np.isfinite(p).any() for p in planes):
            return cls(0.0, 1.0)
        low, high = (float(v) for v in _percentile(planes, [lower, upper]))
        sigma = noise_sigma(patches)
        if sigma > 0:
            bearing = _foreground_blocks(patches, FOREGROUND_SIGMAS * sigma)
            if bearing.size:
                high = float(_percentile(bearing, upper))
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
        """float32 (image - low) / (high - low), computed as (float32(image) - float32(low)) times
        float32(1 / (high - low)); NaN and inf become 0 (missing data reads as background, never as a
        bright pixel). One pass of a numba kernel, the same float32 arithmetic as numpy's."""
        scale = np.float32(1.0 / (self.high - self.low))
        image = np.ascontiguousarray(image)
        out = np.empty(image.shape, np.float32)
        _normalise(image.reshape(-1), np.float32(self.low), scale, out.reshape(-1))
        return out


@numba.njit(cache=True, nogil=True)
def _normalise(image: np.ndarray, low: np.float32, scale: np.float32, out: np.ndarray) -> None:
    for i in range(image.size):
        v = (np.float32(image[i]) - low) * scale
        out[i] = v if np.isfinite(v) else np.float32(0)


FLOAT32_SAFE = 1e30  # magnitudes float32 (what the runtime computes in) holds with full precision


def check_float32_range(data: np.ndarray, where: str) -> None:
    """UserError for float64 intensities float32 cannot hold: beyond FLOAT32_SAFE they become inf,
    below its inverse they lose their precision; either way the image would segment as empty.
    where: what to name (the file and window)."""
    from cyclepose_deploy.errors import UserError

    finite = np.abs(data[np.isfinite(data)])
    top = float(finite.max()) if finite.size else 0.0
    if top > FLOAT32_SAFE or 0 < top < 1 / FLOAT32_SAFE:
        raise UserError(
            f"{where} holds intensities of {top:.3g}, outside the float32 range the runtime computes in "
            f"({1 / FLOAT32_SAFE:g} to {FLOAT32_SAFE:g}): rescale the image, e.g. to 0..65535"
        )


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
    q = np.true_divide(BLOCK_PERCENTILES, 100)  # as np.percentile turns them into quantiles
    kept = []
    for patch in patches:
        p = np.asarray(patch, np.float32)
        if p.ndim != 2:
            p = p.reshape(1, -1)
        values = _bearing_blocks(np.ascontiguousarray(p), BLOCK, float(spread), q)
        if values.size:
            kept.append(values)
    return np.concatenate(kept) if kept else np.empty(0, np.float32)


@numba.njit(cache=True, nogil=True)
def _bearing_blocks(patch: np.ndarray, block: int, spread: float, q: np.ndarray) -> np.ndarray:
    """float32 finite pixels of the blocks of `patch` whose percentile spread (quantiles q[0], q[1],
    numpy's linear rule) exceeds `spread`, block by block in row-major order.

    Per block of n >= 16 finite pixels, the quantile q sits at rank v = (n - 1) q between the sorted
    values a = s[floor v] and b = s[floor v + 1]; only the few smallest and largest values are kept
    (`_extremes`), and the interpolation repeats numpy's _lerp: float64(a) + d g, or float64(b) - d (1 - g)
    from g = v - floor v >= 0.5, with d = b - a rounded to float32 first."""
    ly, lx = patch.shape
    out = np.empty(patch.size, np.float32)
    buf = np.empty(block * block, np.float32)
    kept = 0
    for y in range(0, ly, block):
        for x in range(0, lx, block):
            n = 0
            for v in range(y, min(y + block, ly)):
                for value in patch[v, x : min(x + block, lx)]:
                    buf[n] = value
                    n += np.isfinite(value)  # a non-finite value is overwritten by the next
            if n < 16:
                continue
            low_rank = (n - 1) * q[0]
            high_rank = (n - 1) * q[1]
            small, large = _extremes(buf, n, int(np.floor(low_rank)) + 2, n - int(np.floor(high_rank)))
            r = int(np.floor(low_rank))
            low = _lerp(small[r], small[r + 1], low_rank - np.floor(low_rank))
            r = n - 1 - int(np.floor(high_rank))  # rank floor(v) counted from the top
            high = _lerp(large[r], large[r - 1], high_rank - np.floor(high_rank))
            if high - low > spread:
                out[kept : kept + n] = buf[:n]
                kept += n
    return out[:kept]


@numba.njit(cache=True, nogil=True)
def _lerp(a: np.float32, b: np.float32, gamma: float) -> float:
    """numpy's _lerp for float32 order statistics and a float64 weight, operation for operation."""
    diff = np.float64(np.float32(b - a))
    if gamma >= 0.5:
        return np.float64(b) - diff * (1.0 - gamma)
    return np.float64(a) + diff * gamma


@numba.njit(cache=True, nogil=True)
def _extremes(values: np.ndarray, n: int, k_small: int, k_large: int) -> tuple[np.ndarray, np.ndarray]:
    """The k_small smallest of values[:n] in ascending order and the k_large largest in descending
    order (insertion into short sorted arrays: most values fail the first comparison)."""
    small = np.full(k_small, np.inf, np.float32)
    large = np.full(k_large, -np.inf, np.float32)
    for i in range(n):
        v = values[i]
        if v < small[k_small - 1]:
            j = k_small - 1
            while j > 0 and small[j - 1] > v:
                small[j] = small[j - 1]
                j -= 1
            small[j] = v
        if v > large[k_large - 1]:
            j = k_large - 1
            while j > 0 and large[j - 1] < v:
                large[j] = large[j - 1]
                j -= 1
            large[j] = v
    return small, large


def _percentile(values: np.ndarray | Sequence[np.ndarray], q: float | list[float]) -> np.ndarray:
    """np.percentile(values, q) ('linear'), bit for bit, of the finite values of float32 arrays
    (np.percentile of them concatenated, NaN and inf left out).

    When the values are integers spanning at most GRID_BINS, the two order statistics around each
    quantile's rank come from counts, and numpy interpolates between them: np.quantile of the pair
    [a, b] at the fraction g of the rank is numpy's own _lerp(a, b, g) with the same dtypes (the rank
    is (n - 1) q, computed here as numpy computes it). Otherwise numpy's partition, as before."""
    arrays = [values] if isinstance(values, np.ndarray) else list(values)
    counts = _integer_counts(arrays)
    if counts is None:
        flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.empty(0, np.float32)
        return np.percentile(flat[np.isfinite(flat)], q)
    counts, low = counts
    n = int(counts.sum())
    ranks = (n - 1) * np.true_divide(q, 100, out=...)  # numpy's virtual indexes
    below = np.floor(ranks)
    picks = np.concatenate([below.ravel(), np.minimum(below + 1, n - 1).ravel()]).astype(np.int64)
    stats = (low + np.searchsorted(np.cumsum(counts), picks, side="right")).astype(np.float32)
    pairs = stats.reshape(2, -1).T
    weights = (ranks - below).ravel()
    if np.ndim(q) == 0:  # a scalar q takes numpy's scalar path (weak promotion)
        return np.quantile(pairs[0], float(weights[0]))
    return np.array([np.quantile(pair, [w])[0] for pair, w in zip(pairs, weights, strict=True)])


def _integer_counts(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, float] | None:
    """(counts of the finite values at low + k, low) when the float32 arrays hold at least
    GRID_MIN_VALUES values, all finite integers spanning fewer than GRID_BINS; None otherwise (NaN or
    inf make the range non-finite: numpy's path then drops them)."""
    arrays = [a for a in arrays if a.size]
    if sum(a.size for a in arrays) < GRID_MIN_VALUES:
        return None
    low, high = min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays)
    if not (np.isfinite(low) and np.isfinite(high)) or high - low >= GRID_BINS:
        return None
    counts = np.zeros((4, int(high - low) + 1), np.int64)
    for a in arrays:
        if not _add_grid_counts(a.ravel(), low, counts):
            return None
    return counts.sum(axis=0), low


@numba.njit(cache=True, nogil=True)
def _add_grid_counts(values: np.ndarray, low: float, counts: np.ndarray) -> bool:
    """counts[i % 4, k] += 1 for each value equal to low + k (four interleaved tables, so equal
    neighbours do not wait on each other's increment); False when one is not on that grid."""
    bins = counts.shape[1]
    for i in range(values.size):
        step = np.float64(values[i]) - low
        k = int(step)
        if k != step or k < 0 or k >= bins:
            return False
        counts[i & 3, k] += 1
    return True
