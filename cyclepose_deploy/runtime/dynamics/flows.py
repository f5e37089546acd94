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
def _object_heat(
    labels: np.ndarray, k: int, box: np.ndarray, precision: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Object k's mask and heat map in its box padded by 1; `precision`'s dtype is the heat's."""
    y0, y1, x0, x1 = box[0], box[1], box[2], box[3]
    ly, lx = y1 - y0 + 2, x1 - x0 + 2
    mask = np.zeros((ly, lx), precision.dtype)
    for y in range(y0, y1):
        for x in range(x0, x1):
            if labels[y, x] == k:
                mask[y - y0 + 1, x - x0 + 1] = 1
    cy, cx = _centre(mask)
    return mask, _diffuse(mask, cy, cx, 2 * (ly + lx))


@numba.njit(cache=True)
def _flows_kernel(labels: np.ndarray, boxes: np.ndarray, flows: np.ndarray, precision: np.ndarray) -> None:
    """Write every object's unit flows into `flows` (float64 heat, as Cellpose, for float64 `precision`)."""
    for k in range(1, boxes.shape[0]):
        if boxes[k, 1] > boxes[k, 0]:
            mask, heat = _object_heat(labels, k, boxes[k], precision)
            _write_gradient(mask, heat, boxes[k, 0] - 1, boxes[k, 2] - 1, flows)


@numba.njit(cache=True, nogil=True, parallel=True)
def flow_error_kernel(labels: np.ndarray, boxes: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Per label: mean over its pixels of |flows recomputed from the mask - given flows|^2 (float32 heat,
    twice as fast as float64 and far below the error scale that matters). Objects run in parallel:
    each error is computed on its own, so the result does not depend on the number of threads."""
    errors = np.zeros(boxes.shape[0], np.float64)
    precision = np.zeros(0, np.float32)
    for k in numba.prange(1, boxes.shape[0]):
        if boxes[k, 1] <= boxes[k, 0]:
            continue
        mask, heat = _object_heat(labels, k, boxes[k], precision)
        oy, ox = boxes[k, 0] - 1, boxes[k, 2] - 1
        total, count = 0.0, 0
        for y in range(1, mask.shape[0] - 1):
            for x in range(1, mask.shape[1] - 1):
                if mask[y, x] > 0:
                    gy, gx = _unit_gradient(heat, y, x)
                    total += (gy - flows[0, oy + y, ox + x]) ** 2 + (gx - flows[1, oy + y, ox + x]) ** 2
                    count += 1
        errors[k] = total / max(count, 1)
    return errors


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
    """Heat map after `niter` Jacobi steps, as separable 3x3 sums over the flattened padded box.

    Padding pixels have mask 0 and so stay 0. The loops run over offset views indexed from 0, which
    lets LLVM vectorise them (about 4x faster than 2-D indexing with negative offsets).
    """
    ly, lx = mask.shape
    size = ly * lx
    inner = size - 2 * lx
    heat = np.zeros(size, mask.dtype)
    rows = np.zeros(size, mask.dtype)
    ninth = mask.dtype.type(1.0 / 9.0)
    left, centre, right, row_sum = heat[: size - 2], heat[1 : size - 1], heat[2:], rows[1 : size - 1]
    above, middle, below = rows[:inner], rows[lx : lx + inner], rows[2 * lx :]
    target, weight = heat[lx : lx + inner], mask.ravel()[lx : lx + inner]
    source = cy * lx + cx
    for _ in range(niter):
        heat[source] += 1
        for i in range(size - 2):
            row_sum[i] = left[i] + centre[i] + right[i]
        for i in range(inner):
            target[i] = weight[i] * (above[i] + middle[i] + below[i]) * ninth
    return heat.reshape((ly, lx))


@numba.njit(cache=True)
def _unit_gradient(heat: np.ndarray, y: int, x: int) -> tuple[float, float]:
    dy = np.float64(heat[y + 1, x] - heat[y - 1, x])
    dx = np.float64(heat[y, x + 1] - heat[y, x - 1])
    norm = 1e-60 + np.sqrt(dy * dy + dx * dx)
    return dy / norm, dx / norm


@numba.njit(cache=True)
def _write_gradient(mask: np.ndarray, heat: np.ndarray, oy: int, ox: int, flows: np.ndarray) -> None:
    for y in range(1, mask.shape[0] - 1):
        for x in range(1, mask.shape[1] - 1):
            if mask[y, x] > 0:
                flows[0, oy + y, ox + x], flows[1, oy + y, ox + x] = _unit_gradient(heat, y, x)
