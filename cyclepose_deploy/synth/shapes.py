"""Nucleus shapes: randomly deformed ellipses, packed without overlap but allowed to touch.

Training draws its mask domain from here, and `cyclepose synth` places its nuclei with the same
functions, so the prior a user tunes (diameter range, density) means the same thing in both places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cyclepose_deploy.defaults import DIAMETER

HARMONICS = (2, 3, 4)  # radius wobble of nucleus_mask: 1 + deformation * sum(u_k / k * cos(k angle + phi_k))


@dataclass(frozen=True)
class ShapePrior:
    """What nuclei look like: diameters in pixels, elongation, boundary wobble, how densely they pack."""

    diameter_min: float = DIAMETER[0]
    diameter_max: float = DIAMETER[1]
    max_aspect: float = 1.8
    deformation: float = 0.12
    coverage: float = 0.3
    clustering: float = 0.5
    max_overlap: float = 0.15

    def max_extent(self) -> float:
        """An upper bound, in pixels, on the longest extent of any nucleus this prior draws (what the
        runtime's chunk halo needs; elongated nuclei are longer than their mean diameter).

        nucleus_mask keeps a pixel when its displaced position p + f lies inside the wobbled ellipse:
        |p + f| <= major * (1 + deformation * sum(1/k)) (the radius factor is at most that, and an
        ellipse lies inside the circle of its major semi-axis), and each component of the displacement f
        is at most deformation * diameter / 2, so |f| <= deformation * diameter / sqrt(2). Any two pixel
        centres are at most twice that radius apart; +1 counts the pixels' own width.
        """
        d, aspect = self.diameter_max, max(self.max_aspect, 1.0)
        major = 0.5 * d * np.sqrt(aspect)
        wobble = 1.0 + self.deformation * sum(1.0 / k for k in HARMONICS)
        radius = major * wobble + self.deformation * d / np.sqrt(2.0)
        return float(2.0 * radius + 1.0)


def nucleus_mask(rng: np.random.Generator, diameter: float, aspect: float, deformation: float) -> np.ndarray:
    """A boolean mask of one nucleus: an ellipse of the given mean diameter, rotated, its radius
    perturbed by smooth random harmonics and its outline by a smooth random displacement field."""
    major = 0.5 * diameter * np.sqrt(aspect)
    minor = 0.5 * diameter / np.sqrt(aspect)
    half = int(np.ceil(major * (1.0 + 2.5 * deformation))) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    if deformation > 0:
        sigma = max(diameter / 6.0, 1.0)
        for grid in (yy, xx):
            field = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32), sigma)
            field *= deformation * diameter * 0.5 / (np.abs(field).max() + 1e-6)
            grid += field
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u = c * xx + s * yy
    v = -s * xx + c * yy
    angle = np.arctan2(v, u)
    radius = np.ones_like(angle)
    for k in HARMONICS:
        radius += deformation * rng.uniform(0, 1) / k * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    inside = (u / major) ** 2 + (v / minor) ** 2 <= radius**2
    if not inside.any():
        inside[half, half] = True
    return _largest_component(inside)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def paint_instance(
    labels: np.ndarray, mask: np.ndarray, top: int, left: int, label: int, max_overlap: float
) -> bool:
    """Paint `mask` at (top, left) onto free pixels of `labels` if it overlaps others by at most
    `max_overlap` of its area, so neighbours touch along a shared edge instead of overlapping."""
    h, w = mask.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, labels.shape[0]), min(left + w, labels.shape[1])
    if y1 <= y0 or x1 <= x0:
        return False
    sub = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    region = labels[y0:y1, x0:x1]
    area = int(sub.sum())
    if area == 0:
        return False
    taken = sub & (region != 0)
    if taken.sum() > max_overlap * area:
        return False
    free = sub & ~taken
    if taken.any():
        free = _largest_component(free)
    region[free] = label
    return True


def pack_instances(
    rng: np.random.Generator, shape: tuple[int, int], prior: ShapePrior = ShapePrior(), first_label: int = 1
) -> np.ndarray:
    """An instance label image (uint32, 0 = background) filled with nuclei to about `prior.coverage`,
    partly in clusters so that many nuclei touch."""
    labels = np.zeros(shape, dtype=np.uint32)
    area_target = prior.coverage * shape[0] * shape[1]
    mean_area = np.pi * (0.25 * (prior.diameter_min + prior.diameter_max)) ** 2
    n_clusters = max(1, int(area_target / mean_area / 8))
    cluster_centres = rng.uniform(0, 1, size=(n_clusters, 2)) * np.array(shape)
    covered, label, attempts = 0, first_label, 0
    max_attempts = int(area_target / mean_area * 8) + 20
    while covered < area_target and attempts < max_attempts:
        attempts += 1
        diameter = rng.uniform(prior.diameter_min, prior.diameter_max)
        mask = nucleus_mask(rng, diameter, rng.uniform(1.0, prior.max_aspect), prior.deformation)
        if rng.uniform() < prior.clustering:
            centre = cluster_centres[rng.integers(n_clusters)] + rng.normal(0, 1.5 * prior.diameter_max, 2)
        else:
            centre = rng.uniform(0, 1, 2) * np.array(shape)
        top, left = int(centre[0]) - mask.shape[0] // 2, int(centre[1]) - mask.shape[1] // 2
        if paint_instance(labels, mask, top, left, label, prior.max_overlap):
            covered += int(mask.sum())
            label += 1
    return labels
