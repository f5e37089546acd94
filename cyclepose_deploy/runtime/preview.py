"""A downsampled PNG of the slide with object outlines (encoded by imagecodecs; no matplotlib or PIL)."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np

from cyclepose_deploy.runtime.atomic import write_atomic
from cyclepose_deploy.runtime.normalize import Normalization
from cyclepose_deploy.runtime.slide import Source

OUTLINE = np.array([255, 64, 64], np.uint8)


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
        lab = self.labels
        edge = np.zeros(lab.shape, bool)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[1:] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
        edge &= lab != 0
        rgb = np.repeat(self.image[..., None], 3, axis=2)
        rgb[edge] = OUTLINE
        return rgb

    def save(self, path: str | Path) -> None:
        write_atomic(path, encode_png(self.render()))


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an (H, W, 3) uint8 image."""
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb, dtype=np.uint8), level=6))
