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
from cyclepose_deploy.runtime.dynamics.local import gaussian, window_max

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


@numba.njit(cache=True, nogil=True)
def label_areas(labels: np.ndarray, count: int) -> np.ndarray:
    """int64 pixel count of each label 0..count (np.bincount(labels.ravel(), minlength=count + 1)).
    Counts runs of equal labels in a register: neighbours mostly share a label, and incrementing the
    same counter in memory pixel after pixel would stall on each store."""
    area = np.zeros(count + 1, np.int64)
    flat = labels.ravel()
    run_label, run = 0, 0
    for i in range(flat.size):
        k = flat[i]
        if k != run_label:
            area[run_label] += run
            run_label, run = k, 0
        run += 1
    area[run_label] += run
    return area


@numba.njit(cache=True, nogil=True)
def _zero_labels(labels: np.ndarray, drop: np.ndarray) -> None:
    flat = labels.ravel()
    for i in range(flat.size):
        k = flat[i]
        if k != 0 and drop[k]:
            flat[i] = 0


def remove_masks(labels: np.ndarray, drop: np.ndarray) -> None:
    """Zero the masks whose label k has drop[k] true (drop[0] is ignored)."""
    drop = drop.copy()
    drop[0] = False
    if drop.any():
        _zero_labels(labels, drop)


def flow_errors(labels: np.ndarray, count: int, flows: np.ndarray) -> np.ndarray:
    """Per label 0..count: mean over the mask of the squared difference between the flows recomputed
    from the mask and the given unit flows, summed over dY and dX (Cellpose metrics.flow_error)."""
    return flow_error_kernel(labels, object_boxes(labels, count), flows)


@numba.njit(cache=True, nogil=True)
def _fill_object_holes(labels: np.ndarray, boxes: np.ndarray) -> None:
    """Background pixels enclosed by one mask (not 4-connected to the outside of its box) join it.

    A pixel enclosed by mask k has k pixels left and right of it in its row, so a mask whose pixels
    form one run in every row of its box has no hole (most nuclei): those skip the flood fill."""
    stack = np.empty(64, np.int64)
    for k in range(1, boxes.shape[0]):
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if y1 - y0 < 3 or x1 - x0 < 3 or not _has_gap(labels, k, y0, y1, x0, x1):
            continue
        ly, lx = y1 - y0 + 2, x1 - x0 + 2
        if stack.size < ly * lx:
            stack = np.empty(ly * lx, np.int64)
        outside = np.zeros((ly, lx), np.bool_)
        stack[0], top = 0, 1
        outside[0, 0] = True
        while top:
            top -= 1
            pos = stack[top]
            y, x = pos // lx, pos % lx
            for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= v < ly and 0 <= u < lx and not outside[v, u]:
                    inner = 0 < v < ly - 1 and 0 < u < lx - 1
                    if inner and labels[y0 + v - 1, x0 + u - 1] == k:
                        continue
                    outside[v, u] = True
                    stack[top] = v * lx + u
                    top += 1
        for v in range(1, ly - 1):
            for u in range(1, lx - 1):
                if not outside[v, u] and labels[y0 + v - 1, x0 + u - 1] == 0:
                    labels[y0 + v - 1, x0 + u - 1] = k


@numba.njit(cache=True, nogil=True)
def _has_gap(labels: np.ndarray, k: int, y0: int, y1: int, x0: int, x1: int) -> bool:
    """Whether some row of the box holds two or more separate runs of label k."""
    for y in range(y0, y1):
        runs, inside = 0, False
        for x in range(x0, x1):
            here = labels[y, x] == k
            if here and not inside:
                runs += 1
            inside = here
        if runs > 1:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _inside_and_ring_sums(
    labels: np.ndarray, values: np.ndarray, grown: np.ndarray, near: np.ndarray, count: int, finite: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label 0..count: pixel count and float64 sum of `values` over its pixels, and the same over
    its ring: the background pixels whose `grown` (the max label around them) is the label and, when
    `near` is not empty, whose `near` is 0 (beyond the gap).

    Bit-identical to np.bincount(..., weights=...): one pass in row-major order, so every sum adds its
    terms in bincount's order. The running sum of the current label stays in a register while the
    label repeats (the same additions in the same order; memory is written when the label changes).
    finite: map values as np.nan_to_num does (NaN -> 0, +-inf -> +-float64 max) first."""
    area = np.zeros(count + 1, np.int64)
    inside = np.zeros(count + 1, np.float64)
    ring_area = np.zeros(count + 1, np.int64)
    ring_sum = np.zeros(count + 1, np.float64)
    top = np.finfo(np.float64).max
    gap = near.size > 0
    ly, lx = labels.shape
    k_run, k_sum, k_area = 0, inside[0], 0  # the label whose sum is in the register
    g_run, g_sum, g_area = 0, ring_sum[0], 0
    for y in range(ly):
        for x in range(lx):
            v = np.float64(values[y, x])
            if finite and not np.isfinite(v):
                v = 0.0 if np.isnan(v) else (top if v > 0 else -top)
            k = labels[y, x]
            if k != k_run:
                inside[k_run], area[k_run] = k_sum, area[k_run] + k_area
                k_run, k_sum, k_area = k, inside[k], 0
            k_sum += v
            k_area += 1
            g = grown[y, x]
            if k == 0 and g > 0 and not (gap and near[y, x] != 0):
                if g != g_run:
                    ring_sum[g_run], ring_area[g_run] = g_sum, ring_area[g_run] + g_area
                    g_run, g_sum, g_area = g, ring_sum[g], 0
                g_sum += v
                g_area += 1
    inside[k_run], area[k_run] = k_sum, area[k_run] + k_area
    ring_sum[g_run], ring_area[g_run] = g_sum, ring_area[g_run] + g_area
    return area, inside, ring_area, ring_sum


def _inside_and_ring_means(
    labels: np.ndarray,
    count: int,
    values: np.ndarray,
    ring: int,
    gap: int = 0,
    finite: bool = True,
    grown: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label 0..count: (pixel count, mean of `values` inside, mean over the background pixels
    within `ring` px of it (0.0 where there are none), the number of those ring pixels).

    A background pixel belongs to the ring of the largest label within ring + gap px (a square
    window; local.window_max), skipping the first `gap` px around every object. values: (H, W) of
    any float dtype, read as float64 (through np.nan_to_num when `finite`). grown: window_max(labels,
    ring + gap) when the caller has it."""
    if grown is None:
        grown = window_max(labels, ring + gap)
    near = window_max(labels, gap) if gap else np.zeros((0, 0), labels.dtype)
    finite = finite and not bool(np.isfinite(values).all())  # nan_to_num changes nothing otherwise
    area, inside_sum, ring_area, ring_sum = _inside_and_ring_sums(labels, values, grown, near, count, finite)
    inside = inside_sum / np.maximum(area, 1)
    outside = np.where(ring_area > 0, ring_sum / np.maximum(ring_area, 1), 0.0)
    return area, inside, outside, ring_area


def contrast_sigmas(labels: np.ndarray, count: int, image: np.ndarray, ring: int, noise: float) -> np.ndarray:
    """Per label 0..count: the contrast of `contrasts` in units of its standard error under white
    noise of sigma `noise` (noise sqrt(1/n_inside + 1/n_ring)); inf where noise is 0."""
    if noise <= 0:
        return np.full(count + 1, np.inf)
    area, inside, outside, ring_area = _inside_and_ring_means(labels, count, np.asarray(image), ring)
    error = noise * np.sqrt(1.0 / np.maximum(area, 1) + 1.0 / np.maximum(ring_area, 1))
    return np.where(area > 0, (inside - outside) / error, 0.0)


def contrasts(labels: np.ndarray, count: int, image: np.ndarray, ring: int) -> np.ndarray:
    """Per label 0..count: mean image intensity inside the mask minus the mean over the background
    pixels within `ring` px of it (0.0 for labels without pixels; the ring of an object with no
    background around it is taken as 0, the normalised background)."""
    area, inside, outside, _ = _inside_and_ring_means(labels, count, np.asarray(image), ring)
    out = np.where(area > 0, inside - outside, 0.0)
    out[0] = 0.0
    return out


@numba.njit(cache=True, nogil=True)
def _move_outlines(
    labels: np.ndarray, smooth: np.ndarray, cut: np.ndarray, near: np.ndarray, edge: np.ndarray
) -> None:
    """In place: object pixels on the `edge` (background within the shell) below their object's cut
    are released; background pixels whose `near` object (the largest label within the shell) has a
    cut they reach are taken. Each pixel's decision reads only its own old label and the precomputed
    windows, so updating in place equals deciding everything first."""
    ly, lx = labels.shape
    for y in range(ly):
        for x in range(lx):
            k = labels[y, x]
            if k > 0:
                if edge[y, x] and smooth[y, x] < cut[k]:
                    labels[y, x] = 0
            else:
                n = near[y, x]
                if n > 0 and smooth[y, x] >= cut[n]:
                    labels[y, x] = n


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
    if count == 0:
        return
    image = np.asarray(image, np.float32)
    smooth = gaussian(image if np.isfinite(image).all() else np.nan_to_num(image), 1.0)
    near = window_max(labels, shell)
    grown = window_max(near, 1) if gap == 0 else None  # the (shell + 1) window: one more px around
    _, inside, outside, _ = _inside_and_ring_means(labels, count, smooth, shell + 1, gap, False, grown)
    cut = (outside + level * (inside - outside)).astype(np.float32)
    cut[0] = np.inf
    background = (labels == 0).view(np.uint8)
    if background.any():  # within `shell` px (chessboard) of a background pixel
        edge = window_max(background, shell).view(np.bool_)
    else:  # no background at all: scipy's distance transform gave -1 everywhere, i.e. within reach
        edge = np.ones(labels.shape, np.bool_)
    _move_outlines(labels, smooth, cut, near, edge)


def clean_masks(labels: np.ndarray, count: int, min_size: int) -> None:
    """Remove masks under `min_size` pixels, then fill the survivors' holes (in place)."""
    if count == 0:
        return
    remove_masks(labels, label_areas(labels, count) < max(min_size, 1))
    _fill_object_holes(labels, object_boxes(labels, count))


def edge_objects(labels: np.ndarray, count: int, edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """bool per label 0..count: the mask touches one of the window's sides that is an edge of the
    whole image. edges: (top, bottom, left, right) of `labels`, True where that side is the image's
    own edge (a chunk's side inside the slide is not: its objects continue beyond it)."""
    touching = np.zeros(count + 1, np.bool_)
    sides = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    for side, is_edge in zip(sides, edges, strict=True):
        if is_edge:
            touching[side] = True
    touching[0] = False
    return touching


@numba.njit(cache=True, nogil=True)
def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _label_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of equal nonzero label along each row of (H, W) `labels`, in row-major order: their
    row, start and stop columns (stop exclusive; int64), label (labels' dtype), and the int64 (H + 1)
    `first`: runs first[y]..first[y + 1] - 1 lie in row y."""
    h, w = labels.shape
    n = 0
    for y in range(h):
        before = 0
        for x in range(w):
            k = labels[y, x]
            if k != 0 and k != before:
                n += 1
            before = k
    row, start, stop = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    label = np.empty(n, labels.dtype)
    first = np.empty(h + 1, np.int64)
    r = 0
    for y in range(h):
        first[y] = r
        x = 0
        while x < w:
            k = labels[y, x]
            if k == 0:
                x += 1
                continue
            row[r], start[r], label[r] = y, x, k
            while x < w and labels[y, x] == k:
                x += 1
            stop[r] = x
            r += 1
    first[h] = r
    return row, start, stop, label, first


@numba.njit(cache=True, nogil=True)
def _drop_small_pieces(labels: np.ndarray, count: int) -> bool:
    """Per label keep its 4-connected piece with most pixels (ties: the piece whose first pixel comes
    first in row-major order) and zero the others; True if any pixel changed. Union-find over runs of
    equal label along the rows (a run joins the runs of the same label it overlaps in the row above),
    not over pixels: a nucleus is about one run per row, so 10-20x fewer unions and finds."""
    row, start, stop, label, first = _label_runs(labels)
    n = row.size
    parent = np.arange(n)
    for y in range(1, labels.shape[0]):
        i, above_end = first[y - 1], first[y]
        for j in range(first[y], first[y + 1]):
            while i < above_end and stop[i] <= start[j]:  # runs above that end before run j starts
                i += 1
            a = i
            while a < above_end and start[a] < stop[j]:  # runs above that share a column with run j
                if label[a] == label[j]:
                    ra, rj = _root(parent, a), _root(parent, j)
                    if ra != rj:  # the earlier run becomes the root: a piece's root is its first run
                        if ra < rj:
                            parent[rj] = ra
                        else:
                            parent[ra] = rj
                a += 1
    size = np.zeros(n, np.int64)
    for r in range(n):
        size[_root(parent, r)] += stop[r] - start[r]
    best = np.full(count + 1, -1, np.int64)
    for r in range(n):  # roots in row-major order of their first pixel: on a tie the first piece stays
        k = label[r]
        if parent[r] == r and (best[k] < 0 or size[r] > size[best[k]]):
            best[k] = r
    changed = False
    for r in range(n):
        if _root(parent, r) != best[label[r]]:
            labels[row[r], start[r] : stop[r]] = 0
            changed = True
    return changed


def keep_largest_piece(labels: np.ndarray, count: int) -> bool:
    """One 4-connected piece per mask (in place): stray pixels a mask holds apart from its body (flow
    tails, outline moves) are released to the background, so a nucleus is one simple polygon in
    GeoJSON and ROI outputs and its table area is its outline's. Returns whether anything changed.
    Local to the mask, so chunked runs keep it. Not in Cellpose (its masks can hold several pieces)."""
    if count == 0 or not labels.size:
        return False
    return bool(_drop_small_pieces(labels, count))
