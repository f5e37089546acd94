"""Nuclei placed band by band on a rolling canvas, so a slide of any size is generated in bounded
memory and a nucleus crossing a band border is still whole: each band's nuclei are packed (with the
shape prior of shapes.py) around the already placed nuclei of the band above.
"""

from __future__ import annotations

import numpy as np

from cyclepose_deploy.synth.appearance import SlideStyle, nucleus_brightness, nucleus_pattern, paint_debris
from cyclepose_deploy.synth.shapes import ShapePrior, nucleus_mask, paint_instance


def nucleus_margin(prior: ShapePrior) -> int:
    """Rows a nucleus may reach beyond its centre (the half-size of nucleus_mask's box)."""
    major = 0.5 * prior.diameter_max * np.sqrt(max(prior.max_aspect, 1.0))
    return int(np.ceil(major * (1.0 + 2.5 * prior.deformation))) + 3


class Canvas:
    """A window of `rows` slide rows starting at slide row `row0`: instance labels and the
    fluorophore density painted with them."""

    def __init__(self, rows: int, width: int, row0: int) -> None:
        self.row0 = row0
        self.labels = np.zeros((rows, width), dtype=np.uint32)
        self.fluor = np.zeros((rows, width), dtype=np.float32)

    def local(self, row: int) -> int:
        return row - self.row0

    def shift(self, rows: int) -> None:
        """Move the window down by `rows`, forgetting the top rows and clearing new ones."""
        for array in (self.labels, self.fluor):
            array[:-rows] = array[rows:].copy()
            array[-rows:] = 0
        self.row0 += rows


def place_band(
    rng: np.random.Generator,
    canvas: Canvas,
    rows: tuple[int, int],
    prior: ShapePrior,
    style: SlideStyle,
    first_label: int,
) -> int:
    """Pack nuclei whose centres lie in slide rows [rows[0], rows[1]) to about prior.coverage,
    partly clustered; paint labels and texture onto the canvas. Returns the next free label."""
    top, bottom = rows
    width = canvas.labels.shape[1]
    area_target = prior.coverage * (bottom - top) * width
    mean_area = np.pi * (0.25 * (prior.diameter_min + prior.diameter_max)) ** 2
    n_clusters = max(1, int(area_target / mean_area / 8))
    clusters = np.column_stack([rng.uniform(top, bottom, n_clusters), rng.uniform(0, width, n_clusters)])
    covered, label = 0, first_label
    for _ in range(int(area_target / mean_area * 8) + 20):
        if covered >= area_target:
            break
        centre = _draw_centre(rng, clusters, prior, width, top, bottom)
        if centre is None:
            continue
        diameter = rng.uniform(prior.diameter_min, prior.diameter_max)
        mask = nucleus_mask(rng, diameter, rng.uniform(1.0, prior.max_aspect), prior.deformation)
        pattern_rng = np.random.default_rng(rng.integers(2**63))
        y, x = canvas.local(int(centre[0])) - mask.shape[0] // 2, int(centre[1]) - mask.shape[1] // 2
        if paint_instance(canvas.labels, mask, y, x, label, prior.max_overlap):
            _paint_texture(canvas, pattern_rng, mask, y, x, label, nucleus_brightness(pattern_rng, style))
            covered += int(mask.sum())
            label += 1
    paint_debris(rng, canvas.fluor, (canvas.local(top), canvas.local(bottom)), style)
    return label


def _draw_centre(
    rng: np.random.Generator, clusters: np.ndarray, prior: ShapePrior, width: int, top: int, bottom: int
) -> np.ndarray | None:
    """A nucleus centre inside the band, near a cluster centre or anywhere; None when it falls outside."""
    if rng.uniform() < prior.clustering:
        centre = clusters[rng.integers(len(clusters))] + rng.normal(0, 1.5 * prior.diameter_max, 2)
    else:
        centre = np.array([rng.uniform(top, bottom), rng.uniform(0, width)])
    if not (top <= centre[0] < bottom and 0 <= centre[1] < width):
        return None
    return centre


def _paint_texture(
    canvas: Canvas, rng: np.random.Generator, mask: np.ndarray, y: int, x: int, label: int, brightness: float
) -> None:
    """Fill the pixels that paint_instance gave `label` with this nucleus's fluorophore pattern."""
    h, w = mask.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, canvas.labels.shape[0]), min(x + w, canvas.labels.shape[1])
    owned = canvas.labels[y0:y1, x0:x1] == label
    pattern = nucleus_pattern(rng, mask, brightness)[y0 - y : y1 - y, x0 - x : x1 - x]
    canvas.fluor[y0:y1, x0:x1][owned] = pattern[owned]
