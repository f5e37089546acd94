"""A PNG a person reads at a glance: the downsampled slide with object outlines and, for slides larger
than the overview, a full-resolution crop of the densest region beside it (its place boxed on the
overview). Encoded by imagecodecs; no matplotlib or PIL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np

from cyclepose_deploy.atomic import write_atomic
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import Source

OUTLINE = np.array([255, 64, 64], np.uint8)
BOX = np.array([255, 220, 0], np.uint8)
CROP = 512  # px of the full-resolution crop
GAP = 8


class Preview:
    """Collects every `step`-th pixel of image and labels as blocks pass by; the longest side <= max_side."""

    def __init__(
        self, shape: tuple[int, int], source: Source, norm: Normalization, max_side: int = 1024
    ) -> None:
        self.step = max(1, -(-max(shape) // max_side))
        self.source, self.norm = source, norm
        self.shape = (-(-shape[0] // self.step), -(-shape[1] // self.step))
        self.image = np.zeros(self.shape, np.uint8)
        self.labels = np.zeros(self.shape, np.uint32)

    def observe(self, r0: int, c0: int, labels: np.ndarray) -> None:
        rows = np.arange(-r0 % self.step, labels.shape[0], self.step)
        cols = np.arange(-c0 % self.step, labels.shape[1], self.step)
        if rows.size == 0 or cols.size == 0:
            return
        oy = slice((r0 + int(rows[0])) // self.step, (r0 + int(rows[-1])) // self.step + 1)
        ox = slice((c0 + int(cols[0])) // self.step, (c0 + int(cols[-1])) // self.step + 1)
        self.labels[oy, ox] = labels[np.ix_(rows, cols)]
        raw = self.source.read(r0 + int(rows[0]), r0 + int(rows[-1]) + 1, c0, c0 + labels.shape[1])
        raw = raw[np.ix_(rows - rows[0], cols)]
        self.image[oy, ox] = np.clip(self.norm.apply(raw) * 255, 0, 255).astype(np.uint8)

    def render(self) -> np.ndarray:
        return outlined(self.image, self.labels)

    def dense_window(self, crop: int = CROP) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) in slide px of the crop x crop window with the most nucleus pixels
        (None when the overview is already full resolution or nothing was found)."""
        from scipy import ndimage

        if self.step == 1 or not self.labels.any():
            return None
        side = max(1, crop // self.step)
        density = ndimage.uniform_filter((self.labels > 0).astype(np.float32), side, mode="constant")
        cy, cx = np.unravel_index(int(np.argmax(density)), density.shape)
        h, w = self.shape[0] * self.step, self.shape[1] * self.step
        y0 = int(min(max(cy * self.step - crop // 2, 0), max(h - crop, 0)))
        x0 = int(min(max(cx * self.step - crop // 2, 0), max(w - crop, 0)))
        return y0, y0 + crop, x0, x0 + crop

    def save(
        self, path: str | Path, read_labels: Callable[[int, int, int, int], np.ndarray] | None = None
    ) -> None:
        """The overview, plus the dense full-resolution crop when `read_labels` (a window of the final
        labels) is given and the slide is larger than the overview."""
        overview = self.render()
        window = self.dense_window() if read_labels is not None else None
        if window is None or read_labels is None:
            write_atomic(path, encode_png(overview))
            return
        y0, y1, x0, x1 = window
        h, w = self.source.shape
        y1, x1 = min(y1, h), min(x1, w)
        raw = self.source.read(y0, y1, x0, x1)
        image = np.clip(self.norm.apply(raw) * 255, 0, 255).astype(np.uint8)
        crop = outlined(image, np.asarray(read_labels(y0, y1, x0, x1)))
        s = self.step
        _box(
            overview,
            y0 // s,
            min((y1 - 1) // s, overview.shape[0] - 1),
            x0 // s,
            min((x1 - 1) // s, overview.shape[1] - 1),
        )
        height = max(overview.shape[0], crop.shape[0])
        canvas = np.full((height, overview.shape[1] + GAP + crop.shape[1], 3), 255, np.uint8)
        canvas[: overview.shape[0], : overview.shape[1]] = overview
        canvas[: crop.shape[0], overview.shape[1] + GAP :] = crop
        write_atomic(path, encode_png(canvas))


def outlined(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the grey image with each label's border pixels in OUTLINE."""
    lab = labels
    edge = np.zeros(lab.shape, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    edge &= lab != 0
    rgb = np.repeat(image[..., None], 3, axis=2)
    rgb[edge] = OUTLINE
    return rgb


def _box(rgb: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> None:
    rgb[y0, x0 : x1 + 1] = BOX
    rgb[y1, x0 : x1 + 1] = BOX
    rgb[y0 : y1 + 1, x0] = BOX
    rgb[y0 : y1 + 1, x1] = BOX


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an (H, W, 3) uint8 image."""
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb, dtype=np.uint8), level=6))
