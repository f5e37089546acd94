"""Pass 1 on a Dask cluster (`cyclepose infer --scheduler local[:N] | tcp://HOST:PORT`).

Each chunk is one `dask.distributed` task of the same pure worker the single-process run uses
(`chunks.process_chunk`). A task carries only a small `ChunkJob` (paths and settings, a few hundred
bytes): the worker opens the slide and the model itself, once per worker process, and writes its
core into the run folder's zarr store (runtime.scratch), whose shards are the chunk cores, so writers
never share a file. The driver only schedules, counts and, after pass 1, numbers the labels exactly
as the single-process run does. A task whose worker dies is re-run elsewhere by Dask (its
`allowed-failures`); a re-run overwrites the same shard with the same pixels.

The slide, the model file and the run folder must be reachable under the same paths from every
worker (a shared file system), as for Cellpose's distributed_segmentation.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.artifacts import Model
from cyclepose_deploy.runtime.chunks import Chunk, Settings, process_chunk
from cyclepose_deploy.runtime.normalize import Normalization
from cyclepose_deploy.runtime.slide import SlideOptions

INSTALL = "pip install 'cyclepose-deploy[distributed]' (dask.distributed) on the driver and every worker"


@dataclass(frozen=True)
class ChunkJob:
    """What a worker needs to run any chunk of one slide: small and picklable (no arrays, no sessions).

    slide: the image file; channel/options: which plane and channel (runtime.slide.Slide); model: the
    artifact (runtime.artifacts.Model, a path plus manifest values); threads: ONNX Runtime threads per
    worker; scale: the working-grid rescale (train_diameter / diameter); folder: the run folder;
    shape: (H, W) of the working grid; block: the store's shard side (px)."""

    slide: str
    channel: int | None
    options: SlideOptions | None
    model: Model
    threads: int | None
    scale: float
    norm: Normalization
    settings: Settings
    folder: str
    shape: tuple[int, int]
    keep_prob: bool
    block: int


def parse_scheduler(text: str) -> tuple[str, int | None]:
    """('local', N or None) or ('address', None) for --scheduler; UserError for anything else."""
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and not (count.isdigit() and int(count) >= 1):
            raise UserError(f"--scheduler {text}: the worker count must be a positive integer, e.g. local:4")
        return "local", int(count) if count else None
    if text.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return "address", None
    raise UserError(
        f"--scheduler {text!r}: give local (one worker per core), local:N, or a Dask scheduler address "
        "such as tcp://10.0.0.5:8786"
    )


def check_available() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(f"--scheduler needs dask.distributed, which is not installed: {INSTALL}") from None


class Cluster:
    """A client on a new LocalCluster of N single-threaded worker processes, or on an existing
    scheduler; `threads` is what each worker's ONNX Runtime session gets (local default: the cores
    split evenly, so N workers never oversubscribe them)."""

    def __init__(self, scheduler: str, threads: int | None) -> None:
        check_available()
        from distributed import Client, LocalCluster

        from cyclepose_deploy.runtime.backends.ort import usable_cores

        kind, count = parse_scheduler(scheduler)
        self.cluster: Any = None
        self.threads: int | None
        if kind == "local":
            workers = count or usable_cores()
            self.threads = threads or max(1, usable_cores() // workers)
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            self.client = Client(self.cluster)
        else:
            self.threads = threads
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise UserError(
                    f"cannot reach the Dask scheduler at {scheduler} ({exc}): check the address and that "
                    "the scheduler is running"
                ) from None
        self.workers = len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(
        self,
        task: Callable[..., Any],
        job: ChunkJob,
        chunks: Sequence[Chunk],
        on_result: Callable[[Any], None],
    ) -> None:
        """Run task(job, chunk) for every chunk on the cluster; on_result(result) on the driver as each
        finishes (any order). The first task error is raised once the others are cancelled."""
        from distributed import as_completed

        if not chunks:
            return
        # the job is a few hundred bytes: sent with each task rather than scattered, so no shared
        # dependency can be lost with a worker
        futures = [self.client.submit(task, job, chunk, pure=False) for chunk in chunks]
        try:
            for future in as_completed(futures):
                on_result(future.result())
        finally:
            for future in futures:
                future.cancel()


# worker side -------------------------------------------------------------------------------------
_opened: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
_lock = threading.Lock()


def _open(job: ChunkJob) -> tuple[Any, Any, Any]:
    """(source, runner, store) for this job in this worker thread, opened once and kept."""
    from cyclepose_deploy.runtime.scratch import ScratchStore
    from cyclepose_deploy.runtime.slide import ScaledSource, Slide

    key = (job.folder, threading.get_ident())
    with _lock:
        if key not in _opened:
            for old in [k for k in _opened if k[1] == key[1]]:  # one slide per thread: close the last
                slide, runner, _ = _opened.pop(old)
                getattr(getattr(slide, "base", slide), "close", lambda: None)()
                runner.deactivate()
            slide = Slide(job.slide, job.channel, job.options)
            source = slide if abs(job.scale - 1.0) < 1e-3 else ScaledSource(slide, job.scale)
            runner = job.model.runner(threads=job.threads)
            runner.activate()
            store = ScratchStore(job.folder, job.shape, job.keep_prob, job.block, create=False)
            _opened[key] = (source, runner, store)
        return _opened[key]


def chunk_task(job: ChunkJob, chunk: Chunk) -> tuple[int, int, int]:
    """One chunk on a worker: (chunk index, network tiles run, seeds stored)."""
    source, runner, store = _open(job)
    result = process_chunk(source, job.norm, chunk, runner, job.settings)
    return chunk.index, result.tiles, store.write(result)


def tissue_task(job: ChunkJob, chunk: Chunk) -> tuple[int, bool]:
    """Whether a chunk's core holds tissue (runtime.tissue), on a worker: (chunk index, flag)."""
    from cyclepose_deploy.runtime.tissue import core_has_tissue

    source, _, _ = _open(job)
    return chunk.index, core_has_tissue(source, job.norm, chunk, job.model.lower)


def worker_pid() -> int:
    return os.getpid()
