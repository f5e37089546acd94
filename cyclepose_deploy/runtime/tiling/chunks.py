"""Work chunks: the slide cut into cores on a grid, each read with a halo so that chunks are independent
units of work (runtime.dynamics.halo says how wide the halo must be)."""

from __future__ import annotations

from dataclasses import dataclass

from cyclepose_deploy.runtime.tiling.grid import Window


@dataclass(frozen=True)
class Chunk:
    """A core (the pixels this chunk labels) and its window (core plus halo, clipped to the slide)."""

    index: int
    core: Window
    window: Window

    @property
    def local_core(self) -> Window:
        y0, y1, x0, x1 = self.core
        return y0 - self.window[0], y1 - self.window[0], x0 - self.window[2], x1 - self.window[2]


def chunk_windows(shape: tuple[int, int], chunk: int, halo: int) -> list[Chunk]:
    """Row-major chunks of `chunk` px cores covering a (H, W) px slide, each with `halo` px around it."""
    h, w = shape
    out: list[Chunk] = []
    for y0 in range(0, h, chunk):
        for x0 in range(0, w, chunk):
            core = (y0, min(y0 + chunk, h), x0, min(x0 + chunk, w))
            window = (max(0, y0 - halo), min(h, core[1] + halo), max(0, x0 - halo), min(w, core[3] + halo))
            out.append(Chunk(len(out), core, window))
    return out
