"""The one chunk worker: read -> network -> blend -> dynamics for a work chunk, used by every way a run
is scheduled: sequentially (`ChunkWorker.process`: Dask tasks, the diameter estimate), and as the
stages of the threaded pipeline in this process (runtime.run.pipeline), which call the same steps.

A `ChunkJob` is everything any chunk of one run needs besides the slide and the network: small and
picklable (paths and settings, no arrays, no sessions), so a Dask worker can rebuild the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.dynamics.halo import chunk_halo, chunk_ids
from cyclepose_deploy.runtime.dynamics.segment import DynamicsSettings
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import SlideOptions, Source
from cyclepose_deploy.runtime.tiling.augment import flip_mean
from cyclepose_deploy.runtime.tiling.chunks import Chunk, work_block
from cyclepose_deploy.runtime.tiling.grid import TileGrid
from cyclepose_deploy.runtime.tiling.merger import BlendBuffers, Merger
from cyclepose_deploy.runtime.tiling.options import Tiling
from cyclepose_deploy.runtime.tiling.splitter import TileBatch, split

BLEND_CHANNELS = 4  # flows dY, dX, cellprob logit, and the normalised input image


@dataclass(frozen=True)
class SlideRef:
    """How to reopen the slide in another process: the file and which image of it (SlideOptions)."""

    path: str
    options: SlideOptions


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk of one run shares. shape: (H, W) px of the working grid (the slide rescaled by
    `scale`); channels: the network's input channels. For chunks run in other processes (Dask):
    slide (None: an in-memory image), folder (the run folder holding the store), keep_prob, token (the
    run folder owner's, runtime.run.runfolder: a stale task does not write) and threads (ONNX Runtime
    threads per worker). keep_prob / keep_flows: results carry the probability / the unit flows."""

    tiling: Tiling
    dynamics: DynamicsSettings
    model: Model
    norm: Normalization
    shape: tuple[int, int]
    channels: int = 1
    scale: float = 1.0
    slide: SlideRef | None = None
    folder: str = ""
    keep_prob: bool = False
    keep_flows: bool = False
    token: str = ""
    threads: int | None = None

    @property
    def halo(self) -> int:
        """Context around each core so that chunked labels equal whole-image labels (dynamics.halo)."""
        return chunk_halo(self.model.extent, self.dynamics.niter)

    @property
    def grid(self) -> TileGrid:
        t = self.tiling
        return TileGrid.plan(self.shape, t.tile, t.overlap, t.whole_image, t.chunk)

    @property
    def block(self) -> int:
        """The work chunks' side in px (tiling.chunks.work_block: at most tiling.chunk)."""
        return work_block(self.shape, self.tiling.chunk, max(self.grid.sides))


@dataclass
class ChunkResult:
    """Per core pixel: 1 + global linear index of its object's seed (0 = background), and (when the job
    keeps them) the probability (else an empty array) and the unit flows (2, h, w); seeds: the sorted
    distinct nonzero ids (None: the store finds them)."""

    chunk: Chunk
    ids: np.ndarray
    prob: np.ndarray
    flows: np.ndarray | None = None
    tiles: int = 0
    times: dict[str, float] = field(default_factory=dict)
    seeds: np.ndarray | None = None


class ChunkWorker:
    """The steps of one chunk for a job, a source on the working grid and an active runner. Its chunks
    are blended one after the other in the same memory (merger.BlendBuffers): a window returned by
    Merger.finalize(slot) is valid until the next chunk's blend finalizes into the same slot."""

    def __init__(self, job: ChunkJob, source: Source, runner: Runner) -> None:
        self.job, self.source, self.runner = job, source, runner
        self.grid = job.grid
        self.buffers = BlendBuffers()

    def batches(self, chunk: Chunk, skip: frozenset[tuple[int, int]] = frozenset()) -> Iterator[TileBatch]:
        """Step 1: the tile batches covering the chunk's window, on the global grid, less `skip`.
        Tiles larger than tiling.tile (fitted or whole-image) go fewer per batch: at most batch x
        tile^2 px, about the pixels the user's batch asks for (the API's shared batcher may still
        merge the batches of several images, up to `batch` tiles and limits.MAX_BATCH_PIXELS)."""
        t = self.job.tiling
        th, tw = self.grid.sides
        per_call = max(1, t.batch * t.tile * t.tile // (th * tw))
        return split(self.source, self.job.norm, self.grid, chunk.window, per_call, self.job.channels, skip)

    def network(self, batch: TileBatch) -> np.ndarray:
        """Step 2: (N, 4, T, T) network outputs (5 x flows, logit) and the tiles' first input channel,
        so that blending yields the normalised image beside the flows (for the contrast check). With
        tiling.tta the outputs are averaged over the tile and its flips (flows turned back)."""
        images = batch.images
        out = flip_mean(self.runner.infer, images) if self.job.tiling.tta else self.runner.infer(images)
        if not np.isfinite(out).all():  # inputs are always finite (missing pixels read as 0)
            bad = int(np.flatnonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=1))[0])
            y, x = batch.origins[bad]
            raise UserError(
                f"the model ({self.runner.name}) gave NaN or infinite outputs on the tile at y={y}, x={x} "
                "(px of the working grid): its numbers overflow on this input; use the export's fp32 "
                "model.onnx, or export again"
            )
        return np.concatenate([out, images[:, :1]], axis=1)

    def merger(self, chunk: Chunk) -> Merger:
        """Step 3 begins: an empty blend of the chunk's window (Merger.add / add_batch, finalize)."""
        return Merger(self.grid, chunk.window, BLEND_CHANNELS, self.buffers)

    def segment(self, chunk: Chunk, blended: np.ndarray) -> ChunkResult:
        """Step 4: flow dynamics on the blended window; the core's seed ids and probability."""
        job = self.job
        y0, y1, x0, x1 = chunk.local_core
        logits = blended[2]
        flows = blended[:2] / np.float32(job.model.flow_scale)
        ids, seeds = chunk_ids(
            flows,
            logits,
            core=(slice(y0, y1), slice(x0, x1)),
            origin=(chunk.window[0], chunk.window[2]),
            image_shape=self.source.shape,
            settings=job.dynamics,
            image=blended[3],
            noise=job.norm.noise,
        )
        prob = np.zeros((0, 0), np.float32)  # the store keeps it only when asked: no work otherwise
        if job.keep_prob:
            prob = (1.0 / (1.0 + np.exp(-logits[y0:y1, x0:x1]))).astype(np.float32, copy=False)
        kept = np.ascontiguousarray(flows[:, y0:y1, x0:x1]) if job.keep_flows else None
        return ChunkResult(chunk, ids, prob, kept, seeds=seeds)

    def process(self, chunk: Chunk) -> ChunkResult:
        """The four steps in sequence (a Dask task, the diameter estimate)."""
        merger = self.merger(chunk)
        tiles = 0
        for batch in self.batches(chunk):
            merger.add_batch(self.network(batch), batch.origins)
            tiles += len(batch.origins)
        result = self.segment(chunk, merger.finalize())
        result.tiles = tiles
        return result
