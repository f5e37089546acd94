"""Work chunks: the slide cut into cores on a grid, each read with a halo so that chunks are independent
units of work (runtime.dynamics.halo says how wide the halo must be)."""

from __future__ import annotations

from dataclasses import dataclass

from cyclepose_deploy.runtime.tiling.grid import Window

# px: a working grid longer than this is cut into at least 2 chunks per side, so that the threaded
# pipeline runs one chunk's dynamics while the network works on the next (a 2144^2 grid as one 2048 px
# chunk and strips left its 0.9 s of dynamics after the network; 2 x 2 chunks: 7.7 -> 7.3 s whole run)
PIPELINE_SIDE = 1024
BLOCK_MULTIPLE = 64  # chunk sides are multiples of this, so the store's zarr chunks divide them


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


def work_block(shape: tuple[int, int], chunk: int, tile: int) -> int:
    """The work chunks' side (px) on a (H, W) working grid: the longest side cut into equal parts of at
    most `chunk` px (the memory bound), at least two parts beyond PIPELINE_SIDE, rounded up to a
    multiple of BLOCK_MULTIPLE; never less than the network's `tile` side (px) nor more than `chunk`.
    Labels do not depend on it (chunked == whole image)."""
    side = max(shape)
    parts = max(-(-side // chunk), 2 if side > PIPELINE_SIDE else 1)
    block = -(-side // parts)
    block = -(-block // BLOCK_MULTIPLE) * BLOCK_MULTIPLE
    return min(chunk, max(block, tile))


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
