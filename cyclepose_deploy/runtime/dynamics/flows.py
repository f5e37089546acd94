"""Instance labels -> Cellpose heat-diffusion flows: training targets and the flow-error check.

Cellpose 3 semantics (masks_to_flows_cpu / _extend_centers): per object, in its bounding box padded
by 1, the source is the mask pixel nearest the median of the object's pixel coordinates; for
2 * (ly + lx) iterations (ly, lx: padded box size) the source gains 1 and every mask pixel becomes the
mean of its 3x3 neighbourhood, pixels outside the object counting as 0 (Jacobi update). The flow is
the central-difference gradient of that heat map on the object, normalised to a unit vector.
No log transform: Cellpose's CPU path has none. Everything per object runs in one numba kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from cyclepose_deploy.errors import UserError


def labels_to_flows(labels: np.ndarray) -> np.ndarray:
    """Unit flows (dY, dX) as float32 (2, H, W) pointing towards each object's centre; 0 on background.

    Label values need not be consecutive; 0 is background.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UserError(f"labels must be a 2-D image, got shape {labels.shape}: pass one plane at a time")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be an integer image, got {labels.dtype}: cast or relabel it first")
    flows = np.zeros((2, *labels.shape), dtype=np.float32)
    compact, count = compact_labels(labels)
    if count:
        boxes = object_boxes(compact, count)
        _flows_kernel(compact, boxes, flows, np.zeros(0, np.float64))
    return flows


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """int32 labels 1..N (0 stays background) and N; cheap when labels are already small integers."""
    if labels.size == 0:
        return np.zeros(labels.shape, np.int32), 0
    top = int(labels.max())
    if labels.min() < 0:
        raise UserError("labels must be non-negative (0 = background): relabel the image")
    if top == 0:
        return np.zeros(labels.shape, np.int32), 0
    if top <= max(labels.size, 1 << 20) and top < 2**31 - 1:
        small = labels.astype(np.int32, copy=False)
        present = np.bincount(small.ravel(), minlength=top + 1) > 0
        present[0] = False
        if present[1:].all():
            return np.ascontiguousarray(small), top
        remap = np.zeros(top + 1, np.int32)
        remap[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
        return remap[small], int(present.sum())
    values, inverse = np.unique(labels, return_inverse=True)
    shift = 0 if values[0] == 0 else 1
    return (inverse.reshape(labels.shape) + shift).astype(np.int32), len(values) - (1 - shift)


@numba.njit(cache=True)
def object_boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """(count + 1, 4) int32 boxes y0, y1, x0, x1 (end exclusive) of labels 1..count; row 0 unused."""
    boxes = np.empty((count + 1, 4), np.int32)
    boxes[:, 0] = labels.shape[0]
    boxes[:, 1] = -1
    boxes[:, 2] = labels.shape[1]
    boxes[:, 3] = -1
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x]
            if k > 0:
                boxes[k, 0] = min(boxes[k, 0], y)
                boxes[k, 1] = max(boxes[k, 1], y + 1)
                boxes[k, 2] = min(boxes[k, 2], x)
                boxes[k, 3] = max(boxes[k, 3], x + 1)
    return boxes


@numba.njit(cache=True)
def _flows_kernel(labels: np.ndarray, boxes: np.ndarray, flows: np.ndarray, precision: np.ndarray) -> None:
    """Flows of every object; `precision`'s dtype (float64 as Cellpose, or float32 for the twice faster
    quality check) is the heat map's."""
    for k in range(1, boxes.shape[0]):
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if y1 <= y0:
            continue
        ly, lx = y1 - y0 + 2, x1 - x0 + 2
        mask = np.zeros((ly, lx), precision.dtype)
        for y in range(y0, y1):
            for x in range(x0, x1):
                if labels[y, x] == k:
                    mask[y - y0 + 1, x - x0 + 1] = 1.0
        cy, cx = _centre(mask)
        heat = _diffuse(mask, cy, cx, 2 * (ly + lx))
        _write_gradient(mask, heat, y0 - 1, x0 - 1, flows)


@numba.njit(cache=True)
def _centre(mask: np.ndarray) -> tuple[int, int]:
    """The mask pixel nearest the coordinate-wise median, first in row-major order on ties."""
    ys, xs = np.nonzero(mask)
    my, mx = np.median(ys.astype(np.float64)), np.median(xs.astype(np.float64))
    best, arg = np.inf, 0
    for i in range(ys.size):
        d = (xs[i] - mx) ** 2 + (ys[i] - my) ** 2
        if d < best:
            best, arg = d, i
    return ys[arg], xs[arg]


@numba.njit(cache=True)
def _diffuse(mask: np.ndarray, cy: int, cx: int, niter: int) -> np.ndarray:
    """Heat map after `niter` Jacobi steps; separable 3x3 sums keep the inner loops vectorisable."""
    ly, lx = mask.shape
    heat = np.zeros_like(mask)
    rows = np.zeros_like(mask)
    ninth = mask.dtype.type(1.0 / 9.0)
    for _ in range(niter):
        heat[cy, cx] += 1
        for y in range(1, ly - 1):
            for x in range(1, lx - 1):
                rows[y, x] = heat[y, x - 1] + heat[y, x] + heat[y, x + 1]
        for y in range(1, ly - 1):
            for x in range(1, lx - 1):
                heat[y, x] = mask[y, x] * (rows[y - 1, x] + rows[y, x] + rows[y + 1, x]) * ninth
    return heat


@numba.njit(cache=True)
def _write_gradient(mask: np.ndarray, heat: np.ndarray, oy: int, ox: int, flows: np.ndarray) -> None:
    ly, lx = mask.shape
    for y in range(1, ly - 1):
        for x in range(1, lx - 1):
            if mask[y, x] > 0:
                dy = heat[y + 1, x] - heat[y - 1, x]
                dx = heat[y, x + 1] - heat[y, x - 1]
                norm = 1e-60 + np.sqrt(dy * dy + dx * dx)
                flows[0, oy + y, ox + x] = dy / norm
                flows[1, oy + y, ox + x] = dx / norm
