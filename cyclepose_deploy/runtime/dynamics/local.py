"""Local window filters of the clean-up (masks.py) as numba kernels that release the GIL.

Each is equal, bit for bit, to the scipy.ndimage call it replaced (tests/test_dynamics_local.py checks
them against scipy), and 5-10x faster on a 2048^2 chunk:
- `window_max`: the max over the (2r + 1)^2 square around each pixel, clipped to the image: scipy's
  grey_dilation with size 2r + 1 and mode 'reflect' (the reflected pixels all lie inside the clipped
  window, so they never change the max);
- `gaussian`: scipy's gaussian_filter(image, sigma) of a float32 image in mode 'reflect', with scipy's
  arithmetic: the kernel normalised as scipy normalises it, each 1-D pass summed in float64 as
  acc = x[i] w[0] + sum over k = r..1 of (x[i - k] + x[i + k]) w[k] (outer pairs first, no fused
  multiply-add: what scipy's x86-64 wheels compute) and rounded to float32 after each pass, first
  along axis 0, then along axis 1.
They run on one thread (each takes 5-25 ms on a 2048^2 chunk): a parallel region per pass costs more
than it saves when the other core is busy, and the chunk's flow following already uses all cores.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _max_into(target: np.ndarray, other: np.ndarray) -> None:
    """target = max(target, other), element-wise over 1-D views (views keep the loop simple enough for
    LLVM to vectorise; 2-D indexing with offsets does not)."""
    for x in range(target.size):
        target[x] = max(target[x], other[x])


@numba.njit(cache=True, nogil=True)
def _rows_max(image: np.ndarray, radius: int) -> np.ndarray:
    """Max over the clipped window of 2 * radius + 1 px along each row: the row itself, then the row
    shifted by d = 1..radius each way, so the inner loops run along contiguous memory and vectorise."""
    ly, lx = image.shape
    out = image.copy()
    for y in range(ly):
        row, best = image[y], out[y]
        for d in range(1, min(radius, lx - 1) + 1):
            _max_into(best[: lx - d], row[d:])  # the pixel d to the right
            _max_into(best[d:], row[: lx - d])  # the pixel d to the left
    return out


@numba.njit(cache=True, nogil=True)
def _columns_max(image: np.ndarray, radius: int) -> np.ndarray:
    """Max over the clipped window of 2 * radius + 1 px along each column, row by row (contiguous
    inner loops)."""
    ly, lx = image.shape
    out = np.empty_like(image)
    for y in range(ly):
        best = out[y]
        best[:] = image[max(0, y - radius)]
        for v in range(max(0, y - radius) + 1, min(ly, y + radius + 1)):
            _max_into(best, image[v])
    return out


def window_max(image: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) max over the (2 radius + 1)^2 square around each pixel, clipped to the image (same dtype);
    = scipy.ndimage.grey_dilation(image, size=2 * radius + 1)."""
    if radius <= 0:
        return image.copy()
    return _columns_max(_rows_max(image, radius), radius)


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """float64 weights w[0..r] (centre first) of scipy's 1-D Gaussian kernel, r = int(truncate sigma
    + 0.5), computed with scipy's own expressions (scipy.ndimage._filters._gaussian_kernel1d), so the
    normalisation rounds the same way."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    phi = phi / phi.sum()
    return np.ascontiguousarray(phi[radius:])


@numba.njit(cache=True, nogil=True)
def _reflect(i: int, n: int) -> int:
    """Index i of a line of n px extended in scipy's 'reflect' mode (period 2n: d c b a | a b c d)."""
    i = i % (2 * n)
    return i if i < n else 2 * n - 1 - i


@numba.njit(cache=True, nogil=True)
def _gaussian_columns(image: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The axis-0 pass: each row of the output from rows y - r..y + r (reflected at the ends)."""
    ly, lx = image.shape
    r = w.size - 1
    out = np.empty((ly, lx), np.float32)
    for y in range(ly):
        acc = np.empty(lx, np.float64)
        centre, w0 = image[y], w[0]
        for x in range(lx):
            acc[x] = np.float64(centre[x]) * w0
        for k in range(r, 0, -1):
            up, down, wk = image[_reflect(y - k, ly)], image[_reflect(y + k, ly)], w[k]
            for x in range(lx):
                acc[x] += (np.float64(up[x]) + np.float64(down[x])) * wk
        dst = out[y]
        for x in range(lx):
            dst[x] = np.float32(acc[x])
    return out


@numba.njit(cache=True, nogil=True)
def _gaussian_rows(image: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The axis-1 pass: each row extended by r px on both sides (as scipy's line buffer), then summed
    pair by pair over the whole row (the same sums per pixel; the loops over x vectorise)."""
    ly, lx = image.shape
    r = w.size - 1
    out = np.empty((ly, lx), np.float32)
    for y in range(ly):
        src = image[y]
        line = np.empty(lx + 2 * r, np.float64)
        for x in range(lx):
            line[x + r] = np.float64(src[x])
        for i in range(r):  # the extensions (scipy's line buffer), index arithmetic only here
            line[i] = np.float64(src[_reflect(i - r, lx)])
            line[lx + r + i] = np.float64(src[_reflect(lx + i, lx)])
        acc = np.empty(lx, np.float64)
        centre, w0 = line[r : r + lx], w[0]
        for x in range(lx):
            acc[x] = centre[x] * w0
        for k in range(r, 0, -1):
            left, right, wk = line[r - k : r - k + lx], line[r + k : r + k + lx], w[k]
            for x in range(lx):
                acc[x] += (left[x] + right[x]) * wk
        dst = out[y]
        for x in range(lx):
            dst[x] = np.float32(acc[x])
    return out


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """float32 (H, W) = scipy.ndimage.gaussian_filter(image, sigma) for a float32 (H, W) image."""
    w = gaussian_weights(sigma)
    image = np.ascontiguousarray(image, dtype=np.float32)
    return _gaussian_rows(_gaussian_columns(image, w), w)
