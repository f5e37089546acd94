"""Flows + cell probability -> instance labels (Cellpose compute_masks), for whole images and chunks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cyclepose_deploy.defaults import (
    CELLPROB_THRESHOLD,
    CONTRAST_RING,
    CONTRAST_SIGMAS,
    FLOW_THRESHOLD,
    MAX_SIZE_FRACTION,
    MIN_CONTRAST,
    MIN_SIZE,
    NITER,
    OUTLINE_GAP,
    OUTLINE_LEVEL,
    OUTLINE_SHELL,
)
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.dynamics.follow import follow_and_count
from cyclepose_deploy.runtime.dynamics.masks import (
    clean_masks,
    contrast_sigmas,
    contrasts,
    flow_errors,
    refine_outlines,
    remove_masks,
    seed_masks,
)


@dataclass(frozen=True)
class DynamicsSettings:
    """The knobs of flows -> labels, with Cellpose 3's defaults (defaults.py).

    cellprob_threshold: pixels whose logit exceeds it are foreground.
    flow_threshold: drop masks whose flow error exceeds it; 0 or None disables the check.
    niter: steps of flow following. min_size: smaller masks are removed (pixels).
    max_size_fraction: drop masks larger than this fraction of the whole image (Cellpose 3.1).
    min_contrast: with the normalised image given, drop masks not at least this much brighter than
    the CONTRAST_RING px around them (0 disables; not in Cellpose).
    noise, contrast_sigmas: with the image and the slide's noise sigma (normalised units) given, also
    drop masks whose contrast is below contrast_sigmas standard errors (noise blobs; not in Cellpose).
    outline_shell: with the image given, move outlines by up to this many px to the half-maximum
    of the local intensity edge (masks.refine_outlines; 0 disables; not in Cellpose).
    """

    cellprob_threshold: float = CELLPROB_THRESHOLD
    flow_threshold: float | None = FLOW_THRESHOLD
    niter: int = NITER
    min_size: int = MIN_SIZE
    max_size_fraction: float = MAX_SIZE_FRACTION
    min_contrast: float = MIN_CONTRAST
    outline_shell: int = OUTLINE_SHELL
    noise: float = 0.0  # the slide's noise sigma in normalised units (runtime.normalize); 0: unknown
    contrast_sigmas: float = CONTRAST_SIGMAS

    def __post_init__(self) -> None:
        if self.niter < 0:
            raise UserError(f"niter must be >= 0, got {self.niter}: use e.g. 200")
        if self.flow_threshold is not None and self.flow_threshold < 0:
            raise UserError(f"flow_threshold must be >= 0 (0 disables it), got {self.flow_threshold}")


def flows_to_labels(
    flows: np.ndarray,
    cellprob: np.ndarray,
    *,
    cellprob_threshold: float = CELLPROB_THRESHOLD,
    flow_threshold: float | None = FLOW_THRESHOLD,
    niter: int = NITER,
    min_size: int = MIN_SIZE,
    max_size_fraction: float = MAX_SIZE_FRACTION,
    image: np.ndarray | None = None,
    min_contrast: float = MIN_CONTRAST,
) -> np.ndarray:
    """Instance labels (uint32, 1..N in row-major order of the objects' seeds, 0 = background).

    flows: float32 (2, H, W) UNIT-scale flows (dY, dX). A network trained the Cellpose way outputs
    5 x the unit flows; divide by the manifest's flow_scale (defaults.FLOW_SCALE) before calling this.
    cellprob: float32 (H, W) logits; pixels above cellprob_threshold are foreground.
    NaN in flows or cellprob marks a pixel background.
    image: optional float32 (H, W) normalised image (runtime.normalize) for the min_contrast check.
    """
    settings = DynamicsSettings(
        cellprob_threshold, flow_threshold, niter, min_size, max_size_fraction, min_contrast
    )
    flows, cellprob = check_inputs(flows, cellprob)
    labels, _ = segment(flows, cellprob, settings, image_area=cellprob.size, image=image)
    return renumber(labels)


def check_inputs(flows: np.ndarray, cellprob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 C-contiguous copies-if-needed with shapes checked; NaN flows become background."""
    flows = np.ascontiguousarray(flows, dtype=np.float32)
    cellprob = np.ascontiguousarray(cellprob, dtype=np.float32)
    if flows.ndim != 3 or flows.shape[0] != 2 or cellprob.shape != flows.shape[1:]:
        raise UserError(
            f"flows must be (2, H, W) and cellprob (H, W), got {flows.shape} and {cellprob.shape}: "
            "split the network output into flows = out[:2] / flow_scale and cellprob = out[2]"
        )
    bad = ~np.isfinite(flows).all(axis=0)
    if bad.any():
        flows = np.where(bad, np.float32(0), flows)
        cellprob = np.where(bad, np.float32(np.nan), cellprob)
    return flows, cellprob


def segment(
    flows: np.ndarray,
    cellprob: np.ndarray,
    settings: DynamicsSettings,
    image_area: int,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks labelled by seed rank 1..n (int32) and the seeds' row-major linear indices.

    image_area: pixels in the whole image, for max_size_fraction (chunks pass the slide's area).
    image: the normalised image under the flows, for settings.min_contrast (None: no check).
    """
    foreground = cellprob > settings.cellprob_threshold
    if not foreground.any():
        return np.zeros(cellprob.shape, np.int32), np.zeros(0, np.int64)
    field = flows * foreground
    ends, hist = follow_and_count(field, foreground, settings.niter)
    labels, seeds = seed_masks(hist, ends)
    count = seeds.size
    if count == 0:
        return labels, seeds
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    remove_masks(labels, sizes > settings.max_size_fraction * image_area)
    if settings.flow_threshold:
        remove_masks(labels, flow_errors(labels, count, flows) > settings.flow_threshold)
    clean_masks(labels, count, settings.min_size)
    if image is not None and settings.min_contrast > 0:
        remove_masks(labels, contrasts(labels, count, image, CONTRAST_RING) < settings.min_contrast)
    if image is not None and settings.noise > 0 and settings.contrast_sigmas > 0:
        weak = contrast_sigmas(labels, count, image, CONTRAST_RING, settings.noise) < settings.contrast_sigmas
        remove_masks(labels, weak)
    if image is not None and settings.outline_shell > 0:
        refine_outlines(labels, count, image, settings.outline_shell, OUTLINE_LEVEL, OUTLINE_GAP)
        clean_masks(labels, count, settings.min_size)
    return labels, seeds


def renumber(labels: np.ndarray) -> np.ndarray:
    """uint32 labels 1..N keeping the order of the input labels."""
    top = int(labels.max()) if labels.size else 0
    present = np.bincount(labels.ravel(), minlength=top + 1) > 0
    present[0] = False
    remap = np.zeros(top + 1, np.uint32)
    remap[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    return remap[labels]
