"""Chunks: independent units of work. `process_chunk` is a pure function of (slide, chunk window,
runner, settings), so chunks can be scheduled anywhere (threads here, Dask later) with the same worker."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cyclepose_deploy import defaults
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import Source
from cyclepose_deploy.runtime.tiling.grid import TileGrid, Window
from cyclepose_deploy.runtime.tiling.merger import Merger
from cyclepose_deploy.runtime.tiling.splitter import TileBatch, split

if TYPE_CHECKING:  # the dynamics (numba) load when a chunk is first segmented
    from cyclepose_deploy.runtime.dynamics import DynamicsSettings


@dataclass(frozen=True)
class Settings:
    """Everything besides the slide and the network that decides the result (defaults: runtime/defaults).

    max_diameter: the model's largest mean nucleus diameter (manifest diameter[1]); max_extent: the
    longest extent of a nucleus (manifest max_extent), which sizes the chunk halo. Without max_extent
    the halo assumes a conservative multiple of max_diameter (see `extent`).
    """

    tile: int = defaults.TILE
    overlap: int = defaults.OVERLAP
    batch: int = defaults.BATCH
    chunk: int = defaults.CHUNK
    cellprob_threshold: float = defaults.CELLPROB_THRESHOLD
    flow_threshold: float = defaults.FLOW_THRESHOLD
    niter: int = defaults.NITER
    min_size: int = defaults.MIN_SIZE
    min_contrast: float = defaults.MIN_CONTRAST
    outline_shell: int = defaults.OUTLINE_SHELL
    flow_scale: float = defaults.FLOW_SCALE
    max_diameter: float = defaults.DIAMETER[1]
    max_extent: float | None = None
    channels: int = 1
    noise: float = 0.0  # the slide's noise sigma, normalised (set from the Normalization by the pipeline)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UserError(f"--batch {self.batch} must be at least 1, e.g. {defaults.BATCH}")
        if self.chunk < 64:
            raise UserError(f"--chunk {self.chunk} must be at least 64 px, e.g. {defaults.CHUNK}")

    @property
    def extent(self) -> float:
        """The longest extent of a nucleus in pixels, for the chunk halo."""
        return defaults.extent_for(self.max_diameter, self.max_extent)

    def dynamics(self) -> DynamicsSettings:
        """The flow-dynamics knobs, typed, for segment_chunk."""
        from cyclepose_deploy.runtime.dynamics import DynamicsSettings

        return DynamicsSettings(
            cellprob_threshold=self.cellprob_threshold,
            flow_threshold=self.flow_threshold,
            niter=self.niter,
            min_size=self.min_size,
            min_contrast=self.min_contrast,
            outline_shell=self.outline_shell,
            noise=self.noise,
        )


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


@dataclass
class ChunkResult:
    """Per core pixel: 1 + global linear index of its object's seed (0 = background), and probability."""

    chunk: Chunk
    ids: np.ndarray
    prob: np.ndarray
    tiles: int = 0
    times: dict[str, float] = field(default_factory=dict)


def halo_for(settings: Settings) -> int:
    """The chunk halo for these settings: the dynamics' rule applied to the longest nucleus."""
    from cyclepose_deploy.runtime.dynamics import chunk_halo

    return int(chunk_halo(settings.extent, settings.niter))


def chunk_windows(shape: tuple[int, int], chunk: int, halo: int) -> list[Chunk]:
    """Row-major chunks of `chunk` px cores covering the slide, each with its halo."""
    h, w = shape
    out: list[Chunk] = []
    for y0 in range(0, h, chunk):
        for x0 in range(0, w, chunk):
            core = (y0, min(y0 + chunk, h), x0, min(x0 + chunk, w))
            window = (max(0, y0 - halo), min(h, core[1] + halo), max(0, x0 - halo), min(w, core[3] + halo))
            out.append(Chunk(len(out), core, window))
    return out


def read_chunk(
    source: Source,
    norm: Normalization,
    grid: TileGrid,
    chunk: Chunk,
    settings: Settings,
    skip: frozenset[tuple[int, int]] = frozenset(),
) -> Iterator[TileBatch]:
    """Stage 1: the tile batches covering the chunk's window (core + halo), aligned to the global grid;
    `skip` names tiles whose outputs the caller already holds."""
    return split(source, norm, grid, chunk.window, settings.batch, settings.channels, skip)


BLEND_CHANNELS = 4  # flows dY, dX, cellprob logit, and the normalised input image


def with_image(outputs: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(N, 4, T, T): the network's 3 output channels and the tiles' first input channel, so that
    blending yields the normalised image of the window beside the flows (for the contrast check)."""
    return np.concatenate([outputs, images[:, :1]], axis=1)


def infer_batches(runner: Runner, batches: Iterable[TileBatch]) -> Iterator[tuple[np.ndarray, TileBatch]]:
    """Stage 2: the network on each batch (with the input image appended, see with_image)."""
    for batch in batches:
        yield with_image(runner.infer(batch.images), batch.images), batch


def blend(grid: TileGrid, chunk: Chunk, outputs: Iterable[tuple[np.ndarray, TileBatch]]) -> np.ndarray:
    merger = Merger(grid, chunk.window, BLEND_CHANNELS)
    for out, batch in outputs:
        merger.add_batch(out, batch.origins)
    return merger.finalize()


def segment(
    chunk: Chunk, blended: np.ndarray, settings: Settings, image_shape: tuple[int, int]
) -> ChunkResult:
    """Stage 3: flow dynamics on the window; keep the core's seed ids and probability."""
    from cyclepose_deploy.runtime.dynamics import segment_chunk

    flows = blended[:2] / np.float32(settings.flow_scale)
    logits = blended[2]
    y0, y1, x0, x1 = chunk.local_core
    ids = segment_chunk(
        flows,
        logits,
        core=(slice(y0, y1), slice(x0, x1)),
        origin=(chunk.window[0], chunk.window[2]),
        image_shape=image_shape,
        settings=settings.dynamics(),
        image=blended[3] if blended.shape[0] > 3 else None,
    )
    prob = 1.0 / (1.0 + np.exp(-logits[y0:y1, x0:x1]))
    return ChunkResult(chunk, np.asarray(ids, dtype=np.uint64), prob.astype(np.float32))


def process_chunk(
    source: Source, norm: Normalization, chunk: Chunk, runner: Runner, settings: Settings
) -> ChunkResult:
    """The whole worker for one chunk, sequentially: read -> network -> blend -> dynamics."""
    grid = TileGrid(source.shape, settings.tile, settings.overlap)
    blended = blend(grid, chunk, infer_batches(runner, read_chunk(source, norm, grid, chunk, settings)))
    result = segment(chunk, blended, settings, source.shape)
    result.tiles = len(grid.tiles(chunk.window))
    return result
