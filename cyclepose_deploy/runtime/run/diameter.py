"""Nucleus diameters from an image: model-free blobs, and masks' equivalent-circle diameters.

1. `find_blobs` / `blob_diameter`: scale-normalised Laplacian of Gaussian (Lindeberg 1998): a bright disc
   of diameter d answers most strongly at sigma = d / (2 sqrt 2). The median over the strongest blobs
   is a first estimate that does not depend on the network's own trained range (a network shown
   nuclei twice its trained size splits them, and would then measure its fragments).
2. `mask_diameter` (Cellpose's `utils.diameters`) and `area_weighted_diameter` (the diameter of the
   nucleus the median foreground pixel belongs to) measure a segmentation.
3. `fixed_point`: where a measurement crosses its guess, the network having been shown the image
   rescaled so that the guessed diameter becomes its trained one (runtime.run.scale.estimate finds
   where it measures APPARENT x the guess, to refine the blob guess, as Cellpose refines its size
   model's guess with a first segmentation).
All are functions of the image alone (never of a chunk), so chunked == whole-image still holds.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

from cyclepose_deploy.limits import usable_cores

LOG_SIGMAS = np.geomspace(1.25, 48.0, 22)  # diameters ~3.5-136 px
BLOB_THRESHOLD = 0.12  # normalised LoG response (image 0..1): weaker blobs are noise or texture
# A blob must also stand this many noise sigmas above the LoG response of the image's own noise:
# white noise of sigma s gives a scale-normalised response of std s / (sqrt(2 pi) sigma), which at
# small sigma exceeds BLOB_THRESHOLD on a noisy empty field.
BLOB_NOISE_SIGMAS = 6.0
SAMPLE_SIDE = 1024  # estimation sample: at most this many px per side, at slide resolution
BLOB_DOWNSAMPLE = 2  # blobs are found on the sample averaged in 2 x 2 blocks (8x fewer LoG operations)
MIN_OBJECTS = 3
LOG_THREADS = 4  # at most this many threads for the LoG scales
# Scales from this sigma (px) run on the image averaged in 2^k x 2^k blocks, at sigma / 2^k (from
# PYRAMID_SIGMA / 2; above PYRAMID_SIGMA only where the levels run out), and are interpolated back:
# 2^k x less work per dimension where the kernel is widest (the blob step's cost 0.15 -> 0.05 s on a
# 520 x 696 field with one level; the block mean blurs by sqrt((4^k - 1) / 12) px: 0.5, 1.1, 2.3 at
# k = 1, 2, 3, little at these scales). Levels beyond the first are used only while they keep
# PYRAMID_MIN_SIDE px per side: on 16-32 px levels of small dev images the edges of the interpolation
# became maxima of 130-230 px (5 of 60 estimates off by 3-20x with held edges). On the central 1024
# px sample of a 2048^2 slide, 4 levels instead of 2 and a compiled disc-painting loop: 0.27 -> 0.10 s,
# the same median blob (AMD EPYC, 2 cores).
PYRAMID_SIGMA = 4.0
PYRAMID_MIN_SIDE = 64
AGREEMENT = 2.0  # the network's measurement is kept within this factor of the blob estimate
MAX_SCALE = 4.0  # never upscale more than this for the estimate (or the run)
MIN_SCALE = 1.0 / 16


@dataclass(frozen=True)
class DiameterEstimate:
    """Median nucleus diameter in slide pixels and how it was found: 'blob', 'network', 'given', or
    'guess' (a diameter_guess confirmed: runtime.run.scale._confirm)."""

    diameter: float
    method: str
    blob: float | None = None
    objects: int = 0


def mask_diameter(labels: np.ndarray) -> tuple[float, int]:
    """Cellpose's `utils.diameters`: (median equivalent-circle diameter in px, object count) of an
    integer label image (0 = background); (nan, 0) when it holds no object."""
    _, counts = np.unique(labels[labels > 0], return_counts=True)
    if counts.size == 0:
        return float("nan"), 0
    return float(np.median(np.sqrt(counts)) / (math.sqrt(math.pi) / 2.0)), int(counts.size)


def area_weighted_diameter(labels: np.ndarray) -> tuple[float, int]:
    """(area-weighted median equivalent-circle diameter in px, object count): the diameter of the
    nucleus that the median foreground pixel belongs to. Unlike Cellpose's plain median
    (`mask_diameter`), fragments and nuclei cut by a window or tissue edge weigh by their small area,
    so they pull the estimate down less (on the DSB2018 dev images: F1@0.75 0.620 -> 0.661 with the
    shipped real-nuclei model). (nan, 0) when the labels hold no object."""
    _, counts = np.unique(labels[labels > 0], return_counts=True)
    if counts.size == 0:
        return float("nan"), 0
    diameters = np.sqrt(counts) / (math.sqrt(math.pi) / 2.0)
    order = np.argsort(diameters, kind="stable")
    cumulative = np.cumsum(counts[order]) / counts.sum()
    return float(diameters[order][np.searchsorted(cumulative, 0.5)]), int(counts.size)


@dataclass(frozen=True)
class Blobs:
    """Blob centres (y, x) in px and diameters in px, strongest first."""

    ys: np.ndarray
    xs: np.ndarray
    diameters: np.ndarray

    @property
    def count(self) -> int:
        return int(self.diameters.size)

    @property
    def median(self) -> float:
        return float(np.median(self.diameters)) if self.count else float("nan")


def find_blobs(image: np.ndarray, threshold: float = BLOB_THRESHOLD, noise: float = 0.0) -> Blobs:
    """Bright blobs of a normalised 2-D float image (0 = background, 1 = bright nucleus), from
    scale-normalised LoG maxima. Each pixel keeps its strongest response over LOG_SIGMAS; blobs are
    spatial maxima of that response above `threshold` and above BLOB_NOISE_SIGMAS x the response std of
    white noise of std `noise` (normalised units) at their scale; their best sigma gives
    d = 2 sqrt(2) sigma. Blobs inside a stronger, larger blob (texture) are dropped."""
    image = np.asarray(image, np.float32)
    best = np.full(image.shape, -np.inf, np.float32)
    arg = np.zeros(image.shape, np.int16)
    sigmas = [float(sigma) for sigma in LOG_SIGMAS if 3 * sigma <= max(image.shape)]
    pyramid = [image]  # pyramid[k]: the image averaged in 2^k x 2^k blocks
    while min(pyramid[-1].shape) >= (2 * PYRAMID_SIGMA if len(pyramid) == 1 else 2 * PYRAMID_MIN_SIDE):
        pyramid.append(_block_mean(pyramid[-1], 2))

    def log(sigma: float) -> np.ndarray:
        # sigma / 2^k on level k has the same scale-normalised response; each scale runs on the
        # coarsest level where its sigma is still at least PYRAMID_SIGMA / 2 px
        k = 0
        while k + 1 < len(pyramid) and sigma / 2 ** (k + 1) >= PYRAMID_SIGMA / 2:
            k += 1
        s = sigma / 2**k
        response = -(s**2) * ndimage.gaussian_laplace(pyramid[k], s, mode="reflect")
        return response if k == 0 else _upsample(response, 2**k, image.shape)

    # scipy.ndimage filters release the GIL: the scales run on the usable cores, folded in order (the
    # same result as one thread; 1.7x faster on 2 cores for a 520 x 696 field)
    with ThreadPoolExecutor(min(LOG_THREADS, usable_cores())) as pool:
        for i, response in enumerate(pool.map(log, sigmas)):
            better = response > best
            best[better] = response[better]
            arg[better] = i
    floor = BLOB_NOISE_SIGMAS * noise / (math.sqrt(2.0 * math.pi) * LOG_SIGMAS[arg])
    peaks = (best == ndimage.maximum_filter(best, size=5)) & (best > np.maximum(threshold, floor))
    ys, xs = np.nonzero(peaks)
    diameters = 2.0 * math.sqrt(2.0) * LOG_SIGMAS[arg[ys, xs]]
    responses = best[ys, xs]
    kept = _inside_stronger_blobs(ys, xs, diameters, responses, image.shape)
    order = np.argsort(-responses[kept], kind="stable")
    return Blobs(ys[kept][order], xs[kept][order], diameters[kept][order])


def blob_diameter(
    image: np.ndarray, threshold: float = BLOB_THRESHOLD, noise: float = 0.0
) -> tuple[float, int]:
    """(median diameter in px, blob count) of the bright blobs of a normalised 2-D float image
    (find_blobs); (nan, 0) when none is found."""
    blobs = find_blobs(image, threshold, noise)
    return blobs.median, blobs.count


def _upsample(coarse: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: linear interpolation of an image averaged in factor x factor blocks back to full
    resolution (block centres at (factor - 1) / 2 + factor k), one axis after the other, so that no
    plateau of equal values counts as several maxima. Beyond the outer block centres the values are
    held at 2x (scipy's map_coordinates, which this replaced) and extrapolated linearly at 4x and more,
    where holding would leave strips of 2-10 equal rows at the edges."""
    out = coarse
    for axis, n in enumerate(shape):
        size = coarse.shape[axis]
        pos = (np.arange(n) - (factor - 1) / 2.0) / factor
        if factor <= 2 or size < 2:
            pos = np.clip(pos, 0, size - 1)
        low = np.clip(np.floor(pos), 0, max(size - 2, 0)).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        frac = (pos - low).astype(np.float32).reshape((-1, 1) if axis == 0 else (1, -1))
        out = np.take(out, low, axis) * (1 - frac) + np.take(out, high, axis) * frac
    return np.ascontiguousarray(out, np.float32)


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """(H // factor, W // factor) float32: the image averaged in factor x factor blocks."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = np.asarray(image[:h, :w], np.float32).reshape(h // factor, factor, w // factor, factor)
    return blocks.mean((1, 3))


def coarse_blobs(image: np.ndarray, noise: float, factor: int = BLOB_DOWNSAMPLE) -> Blobs:
    """find_blobs on the image averaged in factor x factor blocks (noise averages down by `factor`),
    positions and diameters given in the image's own px. Nuclei down to ~7 px still span more than
    the smallest LoG scale at half resolution."""
    if factor <= 1 or min(image.shape) < 8 * factor:
        return find_blobs(image, noise=noise)
    blobs = find_blobs(_block_mean(image, factor), noise=noise / factor)
    centre = (factor - 1) / 2.0
    return Blobs(blobs.ys * factor + centre, blobs.xs * factor + centre, blobs.diameters * factor)


def _inside_stronger_blobs(
    ys: np.ndarray, xs: np.ndarray, diameters: np.ndarray, responses: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Keep-mask over blobs: a blob is dropped when it lies inside a stronger blob at least 1.5 x
    larger (chromatin texture inside a nucleus); blobs inside a weaker, larger one (nuclei inside
    the faint blob of their cluster) are kept. Strongest first, larger discs painted as kept."""
    order = np.argsort(-responses, kind="stable")
    return _paint_kept(
        ys.astype(np.int64), xs.astype(np.int64), diameters.astype(np.float64), order, shape[0], shape[1]
    )


@numba.njit(cache=True, nogil=True)
def _paint_kept(
    ys: np.ndarray, xs: np.ndarray, diameters: np.ndarray, order: np.ndarray, h: int, w: int
) -> np.ndarray:
    """_inside_stronger_blobs' loop (a Python loop over ~1000 blobs took 30 ms of the blob step)."""
    cover = np.zeros((h, w), np.float32)  # largest kept diameter covering each pixel
    keep = np.zeros(ys.size, np.bool_)
    for i in order:
        y, x, d = ys[i], xs[i], diameters[i]
        if cover[y, x] >= 1.5 * d:
            continue
        keep[i] = True
        r = d / 2.0
        for v in range(max(0, int(y - r)), min(h, int(y + r) + 1)):
            for u in range(max(0, int(x - r)), min(w, int(x + r) + 1)):
                if (v - y) ** 2 + (u - x) ** 2 <= r * r and cover[v, u] < d:
                    cover[v, u] = d
    return keep


def sample_window(shape: tuple[int, int], side: int = SAMPLE_SIDE) -> tuple[int, int, int, int]:
    """The central window (y0, y1, x0, x1) of at most side x side px used for the estimate."""
    h, w = shape
    sh, sw = min(h, side), min(w, side)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    return y0, y0 + sh, x0, x0 + sw


def fixed_point(points: list[tuple[float, float]]) -> float | None:
    """The largest guess g where log(measured / g) falls from >= 0 to < 0 between neighbouring
    (guess, measured) points (ascending guesses), interpolated linearly in log g; None if none."""
    best = None
    for (g0, m0), (g1, m1) in zip(points, points[1:], strict=False):
        f0, f1 = math.log(m0 / g0), math.log(m1 / g1)
        if f0 >= 0 > f1:
            t = f0 / (f0 - f1)
            best = math.exp(math.log(g0) + t * (math.log(g1) - math.log(g0)))
    return best
