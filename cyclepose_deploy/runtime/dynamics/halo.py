"""Dynamics on one chunk of a slide, with a halo, giving the same objects as a whole-image run.

How the runtime uses it: cut the slide's (flows, cellprob) into cores on a grid, read each core
with `chunk_halo(...)` extra pixels on every side (clipped at the slide edge), call `segment_chunk`
and write the returned core. Each pixel's value is 1 + the global row-major index (gy * W + gx) of
the seed of its object, 0 for background: the id is a property of the object, not of the chunk, so
neighbouring chunks agree without talking to each other, and compacting ids to 1..N in ascending
order gives exactly `flows_to_labels` on the whole image. An object is owned by the chunk whose core
holds its seed (`owned_ids`), e.g. to count it once in an object table.

Why the halo suffices: every rule in the pipeline is local (see masks.py and follow.py), so an object
comes out the same as in the whole image when everything it depends on lies inside the chunk:
- its pixels: an object touching the core lies within one diameter D of the core;
- the trajectories ending near its seed: they start inside the objects around it and converge to
  their centre within about one diameter (and never move further than niter pixels), so those
  starting within min(D, niter) of the object are all that matter;
- the histogram around its seed: the 5x5 peak test (2 px), the 5 rounds of growth of its seed and
  of competing seeds (5 + 5 px), and bilinear interpolation (1 px): 16 px of slack covers them.
Halo = D + min(D, niter) + 16. Trajectories that run into the chunk's edge end near that edge,
more than D + 12 px from any seed that matters.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from cyclepose_deploy.defaults import NITER
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.dynamics.segment import DynamicsSettings, check_inputs, segment

HALO_SLACK = 16


def chunk_halo(max_extent: float, niter: int = NITER) -> int:
    """Pixels of context on each side of a chunk's core so that chunked labels equal whole-image labels.

    max_extent: the largest extent of a nucleus in pixels (its longest axis, not its mean diameter:
    elongated nuclei are longer; synth.shapes.ShapePrior.max_extent bounds it, the manifest records it).
    """
    if not max_extent > 0:
        raise UserError(f"max_extent must be > 0 pixels, got {max_extent}: pass the longest nucleus size")
    extent = math.ceil(max_extent)
    return extent + min(extent, max(int(niter), 0)) + HALO_SLACK


def segment_chunk(
    flows: np.ndarray,
    cellprob: np.ndarray,
    *,
    core: tuple[slice, slice],
    origin: tuple[int, int],
    image_shape: tuple[int, int],
    settings: DynamicsSettings = DynamicsSettings(),
    image: np.ndarray | None = None,
    noise: float = 0.0,
) -> np.ndarray:
    """uint64 ids (1 + global linear index of the object's seed; 0 = background) for the core.

    flows (2, h, w) UNIT-scale and cellprob (h, w) cover the core plus its halo; `core` selects the
    core inside them, `origin` is the global (y, x) of their top-left pixel and `image_shape` the
    slide's (H, W). settings: the same knobs as flows_to_labels; the halo must be
    chunk_halo(max_extent, settings.niter). image: the normalised (h, w) window for the contrast check;
    noise: the slide's noise sigma in normalised units (0.0: unknown).
    """
    return chunk_ids(
        flows,
        cellprob,
        core=core,
        origin=origin,
        image_shape=image_shape,
        settings=settings,
        image=image,
        noise=noise,
    )[0]


def chunk_ids(
    flows: np.ndarray,
    cellprob: np.ndarray,
    *,
    core: tuple[slice, slice],
    origin: tuple[int, int],
    image_shape: tuple[int, int],
    settings: DynamicsSettings = DynamicsSettings(),
    image: np.ndarray | None = None,
    noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """segment_chunk's ids, and the sorted distinct nonzero ids among them (np.unique of the core
    without its zeros, found from the labels: ids grow with the seed rank, so the ids of the labels
    present, in label order, are already sorted)."""
    flows, cellprob = check_inputs(flows, cellprob)
    height, width = (int(v) for v in image_shape)
    _check_placement(cellprob.shape, core, origin, (height, width))
    h, w = cellprob.shape
    edges = (origin[0] == 0, origin[0] + h == height, origin[1] == 0, origin[1] + w == width)
    labels, seeds = segment(flows, cellprob, settings, height * width, image, noise, edges)
    seed_y, seed_x = np.divmod(seeds, cellprob.shape[1])
    table = np.zeros(seeds.size + 1, np.uint64)
    global_y, global_x = (seed_y + origin[0]).astype(np.uint64), (seed_x + origin[1]).astype(np.uint64)
    table[1:] = 1 + global_y * np.uint64(width) + global_x
    ids = np.empty(labels[core].shape, np.uint64)
    present = _map_labels(labels[core], table, ids)
    present[0] = False
    return ids, table[present]


@numba.njit(cache=True, nogil=True)
def _map_labels(labels: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = table[labels] (one pass, no index array); returns which labels occur."""
    present = np.zeros(table.size, np.bool_)
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x]
            out[y, x] = table[k]
            present[k] = True
    return present


def _check_placement(
    shape: tuple[int, ...], core: tuple[slice, slice], origin: tuple[int, int], image_shape: tuple[int, int]
) -> None:
    for axis in range(2):
        if core[axis].step not in (None, 1):
            raise UserError("core slices must have step 1: pass slice(start, stop)")
        if origin[axis] < 0 or origin[axis] + shape[axis] > image_shape[axis]:
            raise UserError(
                f"chunk at origin {origin} of shape {shape} does not fit in the image {image_shape}: "
                "pass the global position of the chunk's top-left pixel"
            )


def owned_ids(ids: np.ndarray, core_origin: tuple[int, int], image_shape: tuple[int, int]) -> np.ndarray:
    """Sorted unique ids in `ids` (a core as returned by segment_chunk, placed at global `core_origin`)
    whose seed lies inside that core: the objects this chunk owns."""
    unique = np.unique(ids)
    unique = unique[unique > 0]
    seed = unique - np.uint64(1)
    gy = (seed // np.uint64(image_shape[1])).astype(np.int64)
    gx = (seed % np.uint64(image_shape[1])).astype(np.int64)
    inside = (gy >= core_origin[0]) & (gy < core_origin[0] + ids.shape[0])
    inside &= (gx >= core_origin[1]) & (gx < core_origin[1] + ids.shape[1])
    return unique[inside]


WARM_SIDE = 64  # px: the warm-up's synthetic chunk


def warm_up(settings: DynamicsSettings = DynamicsSettings()) -> int:
    """Load every numba kernel of `chunk_ids` from numba's cache (or compile it) by segmenting a
    synthetic chunk with the runtime's dtypes and layouts: float32 (2, H, W) flows towards each disc's
    centre, a (H, W) logit and image view of one C-contiguous (4, H, W) array, as runtime.run.worker
    passes them, a core smaller than the window, and a noise sigma so the contrast tests run. Two discs
    of 20 and 12 px: the bright one is kept, the second, as dark as the background, is removed by the
    contrast check. Returns the objects kept (1). runtime.run.warmup runs it in a thread while a run
    reads its slide."""
    blended = np.zeros((4, WARM_SIDE, WARM_SIDE), np.float32)
    blended[2:] = np.array([-5.0, 0.1], np.float32)[:, None, None]
    yy, xx = np.mgrid[0:WARM_SIDE, 0:WARM_SIDE].astype(np.float32)
    for cy, cx, r, brightness in ((24.0, 24.0, 10.0, 0.8), (46.0, 46.0, 6.0, 0.1)):
        dy, dx = yy - cy, xx - cx
        radius = np.hypot(dy, dx)
        inside = radius < r
        blended[0][inside] = -dy[inside] / np.maximum(radius[inside], 1.0)
        blended[1][inside] = -dx[inside] / np.maximum(radius[inside], 1.0)
        blended[2][inside] = 5.0
        blended[3][inside] = brightness
    flows = blended[:2] / np.float32(1.0)  # a new C-contiguous array, as worker.segment divides by flow_scale
    core = (slice(8, WARM_SIDE - 8), slice(8, WARM_SIDE - 8))
    _, seeds = chunk_ids(
        flows,
        blended[2],
        core=core,
        origin=(8, 8),
        image_shape=(WARM_SIDE + 16, WARM_SIDE + 16),
        settings=settings,
        image=blended[3],
        noise=0.01,
    )
    return int(seeds.size)
