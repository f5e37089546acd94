"""End-point histogram -> masks: seeds, growth, quality control and clean-up (Cellpose get_masks et al.).

Masks are int32 images whose value k (1..n) is the rank of the mask's seed in row-major order, so a
mask's identity is its seed's position. Every rule below is deterministic and local (it looks no
further than a few pixels beyond the object), which is what makes chunked runs equal whole runs:
- seeds: histogram count > 10 and the strict maximum of its 5x5 window, ties going to the lower
  row-major index (Cellpose keeps every tied pixel; that can split one object in two);
- growth: 5 rounds of 8-connected growth over pixels with count > 2 (Cellpose's rule); a pixel
  reached by several seeds in the same round goes to the seed with the higher count, then lower
  index (Cellpose lets the weaker seed overwrite);
- holes are filled with background pixels only (Cellpose may also paint over a nucleus inside
  another's hole), after masks under `min_size` pixels are removed.
"""

from __future__ import annotations

import numba
import numpy as np

from cyclepose_deploy.runtime.dynamics.flows import flow_error_kernel, object_boxes

SEED_MIN_COUNT = 10
GROW_MIN_COUNT = 2
GROW_ROUNDS = 5
SEED_RADIUS = 2  # 5x5 window


@numba.njit(cache=True)
def find_seeds(hist: np.ndarray) -> np.ndarray:
    """Row-major linear indices of the histogram peaks (see module docstring for the tie rule)."""
    ly, lx = hist.shape
    out = []
    for y in range(ly):
        for x in range(lx):
            h = hist[y, x]
            if h <= SEED_MIN_COUNT:
                continue
            peak = True
            for v in range(max(0, y - SEED_RADIUS), min(ly, y + SEED_RADIUS + 1)):
                for u in range(max(0, x - SEED_RADIUS), min(lx, x + SEED_RADIUS + 1)):
                    g = hist[v, u]
                    if g > h or (g == h and (v < y or (v == y and u < x))):
                        peak = False
            if peak:
                out.append(y * lx + x)
    return np.array(out, dtype=np.int64)


@numba.njit(cache=True)
def grow_seeds(hist: np.ndarray, seeds: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Seed map: pixel -> 1 + seed rank, by competitive breadth-first growth, strongest seed first."""
    ly, lx = hist.shape
    owner = np.zeros((ly, lx), np.int32)
    frontier = np.empty(seeds.size, np.int64)
    for i in range(priority.size):
        k = priority[i]
        frontier[i] = seeds[k]
        owner[seeds[k] // lx, seeds[k] % lx] = k + 1
    for _ in range(GROW_ROUNDS):
        grown = []
        for pos in frontier:
            y, x = pos // lx, pos % lx
            label = owner[y, x]
            for v in range(max(0, y - 1), min(ly, y + 2)):
                for u in range(max(0, x - 1), min(lx, x + 2)):
                    if owner[v, u] == 0 and hist[v, u] > GROW_MIN_COUNT:
                        owner[v, u] = label
                        grown.append(v * lx + u)
        frontier = np.array(grown, dtype=np.int64)
    return owner


@numba.njit(cache=True)
def assign_pixels(ends: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Each pixel takes the seed label of the histogram pixel its trajectory ended on."""
    ly, lx = ends.shape
    flat = owner.ravel()
    labels = np.zeros((ly, lx), np.int32)
    for y in range(ly):
        for x in range(lx):
            e = ends[y, x]
            if e >= 0:
                labels[y, x] = flat[e]
    return labels


def seed_masks(hist: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks labelled 1..n by seed rank, and the seeds' linear indices (row-major, ascending)."""
    seeds = find_seeds(hist)
    if seeds.size == 0:
        return np.zeros(ends.shape, np.int32), seeds
    counts = hist.ravel()[seeds]
    priority = np.lexsort((seeds, -counts.astype(np.int64))).astype(np.int64)
    owner = grow_seeds(hist, seeds, priority)
    return assign_pixels(ends, owner), seeds


def remove_masks(labels: np.ndarray, drop: np.ndarray) -> None:
    """Zero the masks whose label k has drop[k] true (drop[0] is ignored)."""
    drop = drop.copy()
    drop[0] = False
    if drop.any():
        labels[drop[labels]] = 0


def flow_errors(labels: np.ndarray, count: int, flows: np.ndarray) -> np.ndarray:
    """Per label 0..count: mean over the mask of the squared difference between the flows recomputed
    from the mask and the given unit flows, summed over dY and dX (Cellpose metrics.flow_error)."""
    return flow_error_kernel(labels, object_boxes(labels, count), flows)


@numba.njit(cache=True)
def _fill_object_holes(labels: np.ndarray, boxes: np.ndarray) -> None:
    """Background pixels enclosed by one mask (not 4-connected to the outside of its box) join it."""
    for k in range(1, boxes.shape[0]):
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if y1 - y0 < 3 or x1 - x0 < 3:
            continue
        ly, lx = y1 - y0 + 2, x1 - x0 + 2
        outside = np.zeros((ly, lx), np.bool_)
        stack = [0]
        outside[0, 0] = True
        while stack:
            pos = stack.pop()
            y, x = pos // lx, pos % lx
            for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= v < ly and 0 <= u < lx and not outside[v, u]:
                    inner = 0 < v < ly - 1 and 0 < u < lx - 1
                    if inner and labels[y0 + v - 1, x0 + u - 1] == k:
                        continue
                    outside[v, u] = True
                    stack.append(v * lx + u)
        for v in range(1, ly - 1):
            for u in range(1, lx - 1):
                if not outside[v, u] and labels[y0 + v - 1, x0 + u - 1] == 0:
                    labels[y0 + v - 1, x0 + u - 1] = k


def _inside_and_ring_means(
    labels: np.ndarray, count: int, values: np.ndarray, ring: int, gap: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label 0..count: (pixel count, mean of `values` inside, mean over the background pixels
    within `ring` px of it (0.0 where there are none), the number of those ring pixels)."""
    from scipy import ndimage

    flat = labels.ravel()
    values = values.ravel()
    area = np.bincount(flat, minlength=count + 1)
    inside = np.bincount(flat, weights=values, minlength=count + 1) / np.maximum(area, 1)
    grown = ndimage.grey_dilation(labels, size=2 * (ring + gap) + 1).ravel()
    ring_px = (flat == 0) & (grown > 0)
    if gap:  # skip the first `gap` px around the object (its glow), measure beyond
        ring_px &= ndimage.grey_dilation(labels, size=2 * gap + 1).ravel() == 0
    ring_area = np.bincount(grown[ring_px], minlength=count + 1)
    ring_sum = np.bincount(grown[ring_px], weights=values[ring_px], minlength=count + 1)
    outside = np.where(ring_area > 0, ring_sum / np.maximum(ring_area, 1), 0.0)
    return area, inside, outside, ring_area


def contrast_sigmas(labels: np.ndarray, count: int, image: np.ndarray, ring: int, noise: float) -> np.ndarray:
    """Per label 0..count: the contrast of `contrasts` in units of its standard error under white
    noise of sigma `noise` (noise sqrt(1/n_inside + 1/n_ring)); inf where noise is 0."""
    if noise <= 0:
        return np.full(count + 1, np.inf)
    values = np.nan_to_num(np.asarray(image, np.float64))
    area, inside, outside, ring_area = _inside_and_ring_means(labels, count, values, ring)
    error = noise * np.sqrt(1.0 / np.maximum(area, 1) + 1.0 / np.maximum(ring_area, 1))
    return np.where(area > 0, (inside - outside) / error, 0.0)


def contrasts(labels: np.ndarray, count: int, image: np.ndarray, ring: int) -> np.ndarray:
    """Per label 0..count: mean image intensity inside the mask minus the mean over the background
    pixels within `ring` px of it (0.0 for labels without pixels; the ring of an object with no
    background around it is taken as 0, the normalised background)."""
    values = np.nan_to_num(np.asarray(image, np.float64))
    area, inside, outside, _ = _inside_and_ring_means(labels, count, values, ring)
    out = np.where(area > 0, inside - outside, 0.0)
    out[0] = 0.0
    return out


def refine_outlines(
    labels: np.ndarray, count: int, image: np.ndarray, shell: int, level: float = 0.5, gap: int = 0
) -> None:
    """Move each object's outline to the half-maximum of its local intensity edge (in place).

    A blurred step edge crosses halfway between its plateau and its background exactly at the true
    boundary (the full-width-at-half-maximum rule of microscopy). Per object, the level is the mean of
    its inside and of the background ring of shell + 1 px around it; object pixels within `shell`
    px of the background that are below it are released, and background pixels within `shell` px of
    the object that are above it are taken (never another object's pixels). Works on a Gaussian
    (sigma 1) smoothed image; holes are filled again afterwards by the caller."""
    from scipy import ndimage

    if count == 0:
        return
    smooth = ndimage.gaussian_filter(np.nan_to_num(np.asarray(image, np.float32)), 1.0)
    _, inside, outside, _ = _inside_and_ring_means(labels, count, smooth.astype(np.float64), shell + 1, gap)
    cut = (outside + level * (inside - outside)).astype(np.float32)
    cut[0] = np.inf
    depth = ndimage.distance_transform_cdt(labels > 0, metric="chessboard")
    release = (labels > 0) & (depth <= shell) & (smooth < cut[labels])
    near = ndimage.grey_dilation(labels, size=2 * shell + 1)
    take = (labels == 0) & (near > 0) & (smooth >= cut[near])
    labels[release] = 0
    labels[take] = near[take]


def clean_masks(labels: np.ndarray, count: int, min_size: int) -> None:
    """Remove masks under `min_size` pixels, then fill the survivors' holes (in place)."""
    if count == 0:
        return
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    remove_masks(labels, sizes < max(min_size, 1))
    _fill_object_holes(labels, object_boxes(labels, count))
