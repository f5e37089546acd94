"""Pass 1 over the chunks of one slide: decide which chunks reach tissue (runtime.tissue), then run
network and dynamics on those still to do, in this process (runtime.stages, threads) or on a Dask
cluster (runtime.distributed), each finished chunk into the store (runtime.scratch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.atomic import writing
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.runtime.run.chunks import Chunk, Settings
from cyclepose_deploy.runtime.run.runfolder import load_tissue, save_tissue
from cyclepose_deploy.runtime.run.scratch import ScratchStore
from cyclepose_deploy.runtime.run.stages import Pipeline
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import SlideOptions, Source

Progress = Callable[[str, int, int], None]  # (task, advance, total)


@dataclass(frozen=True)
class RunOptions:
    """How pass 1 runs. scheduler: None runs the chunks in this process (threads); 'local', 'local:N' or
    a Dask scheduler address runs them as dask.distributed tasks (runtime.distributed); resume: finish
    an interrupted run from its run folder (runtime.runfolder); skip_empty: chunks without tissue
    (runtime.tissue) are not sent to the network; threads: ONNX Runtime threads per Dask worker;
    overwrite: set by run_infer from its own argument."""

    scheduler: str | None = None
    resume: bool = False
    skip_empty: bool = True
    threads: int | None = None
    overwrite: bool = False  # with resume: an interrupted run with other settings starts over


@dataclass(frozen=True)
class SlideRef:
    """How to reopen the slide in another process: file, channel and SlideOptions (runtime.slide)."""

    path: str
    channel: int | None
    options: SlideOptions | None


class PassOne:
    """Pass 1 over the chunks that are left: the tissue decision (runtime.tissue), then the network
    and dynamics in this process (runtime.stages, threads) or on a Dask cluster (runtime.distributed);
    every finished chunk goes into the store. token: the run folder owner's (runtime.runfolder),
    which Dask workers check before they write; cluster: a runtime.distributed.Cluster or None."""

    def __init__(
        self,
        source: Source,
        norm: Normalization,
        runner: Any,
        settings: Settings,
        store: ScratchStore,
        progress: Progress,
        times: dict[str, float],
        run: RunOptions,
        ref: SlideRef | None,
        model: Model,
        scale: float,
        cluster: Any,
        token: str = "",
    ) -> None:
        self.source, self.norm, self.runner, self.settings, self.store = source, norm, runner, settings, store
        self.progress, self.times, self.run, self.ref, self.model, self.scale = (
            progress,
            times,
            run,
            ref,
            model,
            scale,
        )
        self.skipped = 0
        self.token = token
        self.cluster = cluster
        self.workers = cluster.workers if cluster is not None else 0

    def job(self) -> Any:
        from cyclepose_deploy.runtime.run.distributed import ChunkJob

        assert self.ref is not None
        return ChunkJob(
            self.ref.path,
            self.ref.channel,
            self.ref.options,
            self.model,
            self.cluster.threads,
            self.scale,
            self.norm,
            self.settings,
            str(self.store.folder),
            self.source.shape,
            self.store.prob is not None,
            self.settings.chunk,
            self.token,
        )

    def to_run(self, chunks: list[Chunk], folder: Path | None, done: set[int]) -> list[Chunk]:
        """The chunks still to segment: not finished, and (with skip_empty) near tissue. The decision
        is saved in the run folder, so a resumed run does not read the slide for it again."""
        t0 = time.perf_counter()
        wanted = [True] * len(chunks)
        if self.run.skip_empty:
            from cyclepose_deploy.runtime.run.tissue import chunks_to_run

            saved = load_tissue(folder, len(chunks)) if folder is not None else None
            wanted = saved if saved is not None else chunks_to_run(chunks, self._tissue(chunks))
            if folder is not None and saved is None:
                save_tissue(folder, wanted)
        self.skipped = wanted.count(False)
        self.times["tissue"] = time.perf_counter() - t0
        return [c for c, w in zip(chunks, wanted, strict=True) if w and c.index not in done]

    def _tissue(self, chunks: list[Chunk]) -> list[np.ndarray]:
        """Per chunk, its core's blocks with tissue (runtime.tissue.tissue_blocks)."""
        from cyclepose_deploy.runtime.run.tissue import tissue_blocks

        blocks: list[np.ndarray] = [np.zeros((0, 4), np.int64)] * len(chunks)
        if self.cluster is None:
            for position, chunk in enumerate(chunks):
                blocks[position] = tissue_blocks(self.source, self.norm, chunk, self.model.lower)
                self.progress("tissue", 1, len(chunks))
            return blocks
        from cyclepose_deploy.runtime.run.distributed import tissue_task

        def record(result: tuple[int, list[list[int]]]) -> None:
            blocks[result[0]] = np.array(result[1], np.int64).reshape(-1, 4)
            self.progress("tissue", 1, len(chunks))

        self.cluster.map(tissue_task, self.job(), chunks, record)
        return blocks

    def segment(self, chunks: list[Chunk]) -> int:
        """Segment `chunks` into the store; returns the network tiles run."""
        if self.cluster is not None:
            return self._distributed(chunks)
        return self._local(chunks)

    def _local(self, chunks: list[Chunk]) -> int:
        pipe = Pipeline(
            self.source, self.norm, chunks, self.runner, self.settings, self.store.folder / "tiles"
        )
        total = pipe.plan.tiles_run
        pipe.on_tiles = lambda n: self.progress("network", n, total)
        with writing(f"temporary data in {self.store.folder.parent}"):
            for result in pipe.results():
                t = time.perf_counter()
                self.store.write(result)
                pipe.times["scratch"] += time.perf_counter() - t
        self.times.update(pipe.times)
        return pipe.tiles_run

    def _distributed(self, chunks: list[Chunk]) -> int:
        from cyclepose_deploy.runtime.run.distributed import chunk_task

        t0 = time.perf_counter()
        tiles = 0

        def record(result: tuple[int, int]) -> None:
            nonlocal tiles
            tiles += result[1]
            self.progress("chunks", 1, len(chunks))

        self.cluster.map(chunk_task, self.job(), chunks, record)
        self.times["cluster"] = time.perf_counter() - t0
        missing = {c.index for c in chunks} - self.store.done()
        if missing:  # the workers wrote somewhere else: no shared file system
            raise UserError(
                f"{len(missing)} of {len(chunks)} chunks did not arrive in {self.store.folder}: every Dask "
                "worker must reach the slide, the model and the output folder under the same paths "
                "(a shared file system)"
            )
        return tiles
