"""Automatic nucleus diameter, so that users need not know it (Cellpose's `eval(diameter=None)` idea).

Two stages, both functions of the slide alone (never of a chunk), so chunked == whole-image still holds:
1. `blob_diameter`: model-free. Scale-normalised Laplacian of Gaussian (Lindeberg 1998): a bright disc
   of diameter d answers most strongly at sigma = d / (2 sqrt 2). The median over the strongest blobs
   is a first estimate that does not depend on the network's own trained range (a network shown
   nuclei twice its trained size splits them, and would then measure its fragments).
2. refinement (runtime.run.scale): the network segments the estimation sample rescaled so that
   a guessed diameter becomes its trained one, and the median mask diameter of that segmentation (the
equivalent-circle
   diameter sqrt(area) / (sqrt(pi) / 2) of Cellpose's `utils.diameters`, with the median weighted by
   area: `area_weighted_diameter`) is mapped back to slide pixels, as Cellpose refines its size
   model's guess with a first segmentation.
   `runtime.run.scale.estimate` looks for the network's fixed point: the diameter d at which the network,
   shown the sample rescaled so that d becomes its trained size, measures d again. It measures at
   the blob guess times 1, sqrt 2, 2, 2 sqrt 2 and 4, and interpolates (in log space) where the
   measured/guessed ratio falls through 1; where it does so more than once, the largest crossing
   wins (texture can make the blob guess too small; a network shown nuclei far above its size
   splits them, so a too-small guess can look self-consistent). The fixed point is a continuous
   function of the image, unlike picking one of a few guesses: a field that differs only by empty
   background gets the same diameter (on the real-slide check, a patch alone and in an empty
   2048 px field: 22.0 px both, where picking a guess gave 20.7 and 23.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LOG_SIGMAS = np.geomspace(1.25, 48.0, 22)  # diameters ~3.5-136 px
BLOB_THRESHOLD = 0.12  # normalised LoG response (image 0..1): weaker blobs are noise or texture
# A blob must also stand this many noise sigmas above the LoG response of the image's own noise:
# white noise of sigma s gives a scale-normalised response of std s / (sqrt(2 pi) sigma), which at
# small sigma exceeds BLOB_THRESHOLD on a noisy empty field.
BLOB_NOISE_SIGMAS = 6.0
SAMPLE_SIDE = 1024  # estimation sample: at most this many px per side, at slide resolution
MIN_OBJECTS = 3
AGREEMENT = 2.0  # the network's measurement is kept within this factor of the blob estimate
GUESS_FACTORS = (1.0, math.sqrt(2.0), 2.0, 2.0 * math.sqrt(2.0), 4.0)  # x the blob estimate
MAX_SCALE = 4.0  # never upscale more than this for the estimate (or the run)
MIN_SCALE = 1.0 / 16


@dataclass(frozen=True)
class DiameterEstimate:
    """Median nucleus diameter in slide pixels and how it was found ('blob', 'network', 'given')."""

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


def blob_diameter(
    image: np.ndarray, threshold: float = BLOB_THRESHOLD, noise: float = 0.0
) -> tuple[float, int]:
    """(median diameter in px, blob count) of bright blobs in a normalised 2-D float image (0 =
    background, 1 = bright nucleus), from scale-normalised LoG maxima; (nan, 0) when none is found.

    Each pixel keeps its strongest response over LOG_SIGMAS; blobs are spatial maxima of that
    response above `threshold` and above BLOB_NOISE_SIGMAS x the response std of white noise of
    std `noise` (normalised units) at their scale; their best sigma gives d = 2 sqrt(2) sigma."""
    image = np.asarray(image, np.float32)
    best = np.full(image.shape, -np.inf, np.float32)
    arg = np.zeros(image.shape, np.int16)
    for i, sigma in enumerate(LOG_SIGMAS):
        if 3 * sigma > max(image.shape):
            break
        response = -(sigma**2) * ndimage.gaussian_laplace(image, sigma, mode="reflect")
        better = response > best
        best[better] = response[better]
        arg[better] = i
    floor = BLOB_NOISE_SIGMAS * noise / (math.sqrt(2.0 * math.pi) * LOG_SIGMAS[arg])
    peaks = (best == ndimage.maximum_filter(best, size=5)) & (best > np.maximum(threshold, floor))
    if not peaks.any():
        return float("nan"), 0
    ys, xs = np.nonzero(peaks)
    diameters = 2.0 * math.sqrt(2.0) * LOG_SIGMAS[arg[ys, xs]]
    kept = _inside_stronger_blobs(ys, xs, diameters, best[ys, xs], image.shape)
    return float(np.median(diameters[kept])), int(kept.sum())


def _inside_stronger_blobs(
    ys: np.ndarray, xs: np.ndarray, diameters: np.ndarray, responses: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Keep-mask over blobs: a blob is dropped when it lies inside a stronger blob at least 1.5 x
    larger (chromatin texture inside a nucleus); blobs inside a weaker, larger one (nuclei inside
    the faint blob of their cluster) are kept. Strongest first, larger discs painted as kept."""
    cover = np.zeros(shape, np.float32)  # largest kept diameter covering each pixel
    keep = np.zeros(ys.size, bool)
    h, w = shape
    for i in np.argsort(-responses, kind="stable"):
        y, x, d = int(ys[i]), int(xs[i]), float(diameters[i])
        if cover[y, x] >= 1.5 * d:
            continue
        keep[i] = True
        r = d / 2.0
        y0, y1 = max(0, int(y - r)), min(h, int(y + r) + 1)
        x0, x1 = max(0, int(x - r)), min(w, int(x + r) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        region = cover[y0:y1, x0:x1]
        region[disc] = np.maximum(region[disc], d)
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
