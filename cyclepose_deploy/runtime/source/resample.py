"""Linear resampling of a window at arbitrary pixel coordinates, separably.

`bilinear(raw, ys, xs)` returns what `scipy.ndimage.map_coordinates(raw, meshgrid(ys, xs), order=1,
mode="nearest")` returns, to the bit (same weights, same order of the four products, same rounding to
the input's dtype; tests compare them on random windows, dtypes and scales), without the two
(H, W) float64 coordinate grids map_coordinates needs: each output row and column has its two
neighbours and weights computed once. Why our own code: rescaling the slide to the model's diameter
feeds every tile, the tissue check and the diameter estimate, and map_coordinates took 0.3-0.5 s per
4 MPix here (about 10x this).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage

# the dtypes the kernel is compiled for; anything else (float16, bool) takes map_coordinates
FAST_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.float32, np.float64)
)
_ROUNDING = {"u": 1, "i": 2, "f": 0}  # map_coordinates' rounding of a float result to the output dtype


def bilinear(raw: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) float32: `raw` (H, W) interpolated linearly at rows ys and columns xs
    (float64 px, 0 = the first pixel's centre), indices beyond the edge clamped to it
    (ndimage's mode "nearest"), rounded to raw's dtype as map_coordinates does, then float32."""
    ys = np.asarray(ys, np.float64)
    xs = np.asarray(xs, np.float64)
    if raw.dtype not in FAST_DTYPES or raw.ndim != 2 or raw.size == 0:
        coords = np.meshgrid(ys, xs, indexing="ij")
        return ndimage.map_coordinates(raw, coords, order=1, mode="nearest").astype(np.float32)
    out = np.empty((ys.size, xs.size), np.float64)
    rows, columns = _neighbours(ys, raw.shape[0]), _neighbours(xs, raw.shape[1])
    _interpolate(np.ascontiguousarray(raw), rows, columns, out, _ROUNDING[raw.dtype.kind])
    return out.astype(raw.dtype).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _neighbours(coords, size):  # type: ignore[no-untyped-def]
    """Per coordinate: the lower and upper neighbour's index (clamped to 0..size-1 after the weights
    are taken, as ndimage does) and their weights 1 - t and t."""
    n = coords.size
    low, high = np.empty(n, np.int64), np.empty(n, np.int64)
    w_low, w_high = np.empty(n, np.float64), np.empty(n, np.float64)
    for k in range(n):
        start = math.floor(coords[k])
        t = coords[k] - start
        low[k] = min(max(int(start), 0), size - 1)
        high[k] = min(max(int(start) + 1, 0), size - 1)
        w_low[k] = 1.0 - t
        w_high[k] = 1.0 - w_low[k]  # ndimage's last weight: 1 minus the others (not t: 1 ulp apart)
    return low, high, w_low, w_high


@numba.njit(cache=True, nogil=True)
def _interpolate(raw, rows, columns, out, rounding):  # type: ignore[no-untyped-def]
    """out[i, j] from raw's 2 x 2 neighbours; rows, columns: _neighbours of ys and xs."""
    y0, y1, wy0, wy1 = rows
    x0, x1, wx0, wx1 = columns
    for i in range(y0.size):
        a, b, p, q = y0[i], y1[i], wy0[i], wy1[i]
        for j in range(x0.size):
            c, d, r, s = x0[j], x1[j], wx0[j], wx1[j]
            # ndimage's sum: value x y-weight x x-weight, row-major over the 2 x 2 neighbours
            t = 0.0
            t += raw[a, c] * p * r
            t += raw[a, d] * p * s
            t += raw[b, c] * q * r
            t += raw[b, d] * q * s
            if rounding == 1:  # unsigned: half up, negatives to 0
                t = math.floor(t + 0.5) if t > 0 else 0.0
            elif rounding == 2:  # signed: half away from zero
                t = math.floor(t + 0.5) if t > 0 else math.ceil(t - 0.5)
            out[i, j] = t
    return out
