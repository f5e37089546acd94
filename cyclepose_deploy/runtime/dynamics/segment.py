"""Flows + cell probability -> instance labels (Cellpose compute_masks), for whole images and chunks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cyclepose_deploy import limits
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
from cyclepose_deploy.errors import OptionError, UserError
from cyclepose_deploy.runtime.dynamics.follow import follow_and_count
from cyclepose_deploy.runtime.dynamics.masks import (
    clean_masks,
    contrast_sigmas,
    contrasts,
    edge_objects,
    flow_errors,
    keep_largest_piece,
    label_areas,
    refine_outlines,
    remove_masks,
    seed_masks,
)


@dataclass(frozen=True)
class DynamicsSettings:
    """The knobs of flows -> labels, with Cellpose 3's defaults (cyclepose_deploy/defaults.py), checked
    against cyclepose_deploy.limits (OptionError naming the setting).

    cellprob_threshold: pixels whose logit exceeds it are foreground.
    flow_threshold: drop masks whose flow error exceeds it; 0 (or None) disables the check. Masks cut
    by the image's edge are exempt (not in Cellpose): their flows point at a centre outside the image,
    so their error is large by construction, and the check removed a third of them on real fields.
    niter: steps of flow following. min_size: smaller masks are removed (pixels).
    exclude_on_edges: drop masks that touch the image's edge (Cellpose's exclude_on_edges).
    max_size_fraction: drop masks larger than this fraction of the whole image (Cellpose 3.1).
    min_contrast: with the normalised image given, drop masks not at least this much brighter than
    the CONTRAST_RING px around them (0 disables; not in Cellpose).
    contrast_sigmas: with the image and the slide's noise sigma given (`segment(noise=...)`), also drop
    masks whose contrast is below this many standard errors (noise blobs; not in Cellpose).
    outline_shell: with the image given, move outlines by up to this many px to the half-maximum
    of the local intensity edge (masks.refine_outlines; 0 disables; not in Cellpose).
    """

    cellprob_threshold: float = CELLPROB_THRESHOLD
    flow_threshold: float = FLOW_THRESHOLD
    niter: int = NITER
    min_size: int = MIN_SIZE
    max_size_fraction: float = MAX_SIZE_FRACTION
    min_contrast: float = MIN_CONTRAST
    outline_shell: int = OUTLINE_SHELL
    contrast_sigmas: float = CONTRAST_SIGMAS
    exclude_on_edges: bool = False

    def __post_init__(self) -> None:
        if self.flow_threshold is None:  # Cellpose's way of saying "no flow check"
            object.__setattr__(self, "flow_threshold", 0.0)
        for name in ("cellprob_threshold", "flow_threshold", "niter", "min_size"):
            object.__setattr__(self, name, limits.INFER[name].check(name, getattr(self, name)))


def flows_to_labels(
    flows: np.ndarray,
    cellprob: np.ndarray,
    *,
    image: np.ndarray | None = None,
    noise: float = 0.0,
    **settings: Any,
) -> np.ndarray:
    """Instance labels (uint32, 1..N in row-major order of the objects' seeds, 0 = background).

    flows: float32 (2, H, W) UNIT-scale flows (dY, dX). A network trained the Cellpose way outputs
    5 x the unit flows; divide by the manifest's flow_scale (defaults.FLOW_SCALE) before calling this.
    cellprob: float32 (H, W) logits; pixels above cellprob_threshold are foreground.
    NaN in flows or cellprob marks a pixel background.
    image: optional float32 (H, W) normalised image (runtime.source.normalize) for the contrast
    checks and outline refinement; noise: its noise sigma (normalised units, 0.0: unknown).
    settings: DynamicsSettings by name (cellprob_threshold=0.0, flow_threshold=0.4, niter=200,
    min_size=15, ...); OptionError for an unknown name or a value out of range.
    """
    try:
        dynamics = DynamicsSettings(**settings)
    except TypeError:
        known = ", ".join(f.name for f in fields(DynamicsSettings))
        unknown = sorted(set(settings) - {f.name for f in fields(DynamicsSettings)})
        raise OptionError(
            unknown[0], f"unknown setting {{{unknown[0]}}}; the settings are: {known}"
        ) from None
    flows, cellprob = check_inputs(flows, cellprob)
    labels, _ = segment(flows, cellprob, dynamics, cellprob.size, image, noise)
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
    if np.isfinite(flows).all():  # the usual case: one pass, no per-pixel mask
        return flows, cellprob
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
    noise: float = 0.0,
    edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> tuple[np.ndarray, np.ndarray]:
    """Masks labelled by seed rank 1..n (int32), each one 4-connected piece, and the seeds' row-major
    linear indices.

    image_area: pixels in the whole image, for max_size_fraction (chunks pass the slide's area).
    image: the normalised image under the flows, for settings.min_contrast (None: no check).
    noise: the slide's noise sigma in normalised units (runtime.source.normalize; 0.0: unknown), for
    settings.contrast_sigmas.
    edges: (top, bottom, left, right): which sides of this window are the image's own edges (all of a
    whole image; a chunk's sides on the slide's edge), for the flow check's exemption and
    settings.exclude_on_edges.
    """
    foreground = cellprob > settings.cellprob_threshold
    if not foreground.any():
        return np.zeros(cellprob.shape, np.int32), np.zeros(0, np.int64)
    ends, hist = follow_and_count(flows, foreground, settings.niter)
    labels, seeds = seed_masks(hist, ends)
    count = seeds.size
    if count == 0:
        return labels, seeds
    remove_masks(labels, label_areas(labels, count) > settings.max_size_fraction * image_area)
    if settings.flow_threshold:
        bad = flow_errors(labels, count, flows) > settings.flow_threshold
        remove_masks(labels, bad & ~edge_objects(labels, count, edges))
    clean_masks(labels, count, settings.min_size)
    if image is not None and settings.min_contrast > 0:
        remove_masks(labels, contrasts(labels, count, image, CONTRAST_RING) < settings.min_contrast)
    if image is not None and noise > 0 and settings.contrast_sigmas > 0:
        weak = contrast_sigmas(labels, count, image, CONTRAST_RING, noise) < settings.contrast_sigmas
        remove_masks(labels, weak)
    refined = image is not None and settings.outline_shell > 0
    if refined:
        refine_outlines(labels, count, image, settings.outline_shell, OUTLINE_LEVEL, OUTLINE_GAP)
    if keep_largest_piece(labels, count) or refined:
        clean_masks(labels, count, settings.min_size)
    if settings.exclude_on_edges:
        remove_masks(labels, edge_objects(labels, count, edges))
    return labels, seeds


def renumber(labels: np.ndarray) -> np.ndarray:
    """uint32 labels 1..N keeping the order of the input labels."""
    top = int(labels.max()) if labels.size else 0
    present = np.bincount(labels.ravel(), minlength=top + 1) > 0
    present[0] = False
    remap = np.zeros(top + 1, np.uint32)
    remap[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    return remap[labels]
