"""Pass 1 on a Dask cluster (`cyclepose infer --scheduler local[:N] | tcp://HOST:PORT`).

Each chunk is one `dask.distributed` task of the same pure worker the single-process run uses
(`runtime.run.worker.ChunkWorker.process`). A task carries only a small `ChunkJob` (paths and
settings, a few hundred bytes): the worker opens the slide and the model itself, once per worker
process, and writes its
core into the run folder's zarr store (runtime.scratch), whose zarr chunks tile the chunk cores, so
writers never share a file. The driver only schedules, counts and, after pass 1, numbers the labels
exactly as the single-process run does. A task whose worker dies is re-run elsewhere by Dask (its
`allowed-failures`); a re-run overwrites the same zarr chunks with the same pixels.

The slide, the model file and the run folder must be reachable under the same paths from every
worker (a shared file system), as for Cellpose's distributed_segmentation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from cyclepose_deploy import limits
from cyclepose_deploy.errors import OptionError, UserError, literal
from cyclepose_deploy.runtime.run.worker import ChunkJob, ChunkWorker
from cyclepose_deploy.runtime.tiling.chunks import Chunk

INSTALL = "pip install 'cyclepose-deploy[distributed]' (dask.distributed) on the driver and every worker"


def parse_scheduler(text: str) -> tuple[str, int | None]:
    """('local', N or None) or ('address', None) for the scheduler option; OptionError otherwise."""
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and not (count.isdigit() and 1 <= int(count) <= limits.threads().high):
            raise OptionError(
                "scheduler",
                f"{{scheduler}} {literal(text)}: the worker count must be a whole number from 1 to "
                f"{limits.threads().high:g} ({limits.THREADS_PER_CORE} per core), e.g. local:2",
            )
        return "local", int(count) if count else None
    if text.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return "address", None
    raise OptionError(
        "scheduler",
        f"{{scheduler}} {literal(repr(text))}: give local (one worker per core), local:N, or a Dask "
        "scheduler address such as tcp://10.0.0.5:8786",
    )


def check_available() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise OptionError(
            "scheduler", f"{{scheduler}} needs dask.distributed, which is not installed: {INSTALL}"
        ) from None


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
                try:
                    result = future.result()
                except (UserError, KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # KilledWorker, a worker's import error, a lost scheduler
                    raise UserError(_task_error(exc)) from None
                on_result(result)
        finally:
            for future in futures:
                future.cancel()


def _task_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    if name == "KilledWorker":
        return (
            f"a chunk killed its Dask worker repeatedly ({text}): the worker ran out of memory or "
            "crashed; give workers more memory or use a smaller --chunk"
        )
    if isinstance(exc, ImportError):
        return f"a Dask worker cannot import the runtime ({text}): {INSTALL}"
    return f"a Dask task failed ({name}: {text}); the finished chunks are kept for --resume"


# worker side -------------------------------------------------------------------------------------
_opened: dict[int, tuple[str, ChunkWorker, Any, Any]] = {}  # thread id -> (token, worker, store, slide)
_lock = threading.Lock()


def _open(job: ChunkJob) -> tuple[ChunkWorker, Any]:
    """(chunk worker, store) of this job's run in this worker thread, opened once per run (a new run,
    even to the same output, has a new token and reopens everything)."""
    from cyclepose_deploy.runtime.run.scratch import ScratchStore
    from cyclepose_deploy.runtime.source.slide import Slide, at_scale

    thread = threading.get_ident()
    with _lock:
        cached = _opened.get(thread)
        if cached is not None and cached[0] == job.token:
            return cached[1], cached[2]
        if cached is not None:  # one run per thread: release the last one
            _, old_worker, _, old_slide = _opened.pop(thread)
            old_slide.close()
            old_worker.runner.deactivate()
    assert job.slide is not None
    slide = Slide(job.slide.path, None, job.slide.options)
    runner = job.model.runner(threads=job.threads)
    runner.activate()
    worker = ChunkWorker(job, at_scale(slide, job.scale), runner)
    store = ScratchStore(job.folder, job.shape, job.keep_prob, job.block, job.keep_flows, create=False)
    with _lock:
        _opened[thread] = (job.token, worker, store, slide)
    return worker, store


def chunk_task(job: ChunkJob, chunk: Chunk) -> tuple[int, int]:
    """One chunk on a worker: (chunk index, network tiles run). Nothing is written when the run
    folder has another owner by now (the driver that sent this task is gone)."""
    from cyclepose_deploy.runtime.run.runfolder import owner_token

    worker, store = _open(job)
    result = worker.process(chunk)
    if owner_token(job.folder) == job.token:
        store.write(result)
    return chunk.index, result.tiles


def tissue_task(job: ChunkJob, chunk: Chunk) -> tuple[int, list[list[int]]]:
    """A chunk core's blocks with tissue (runtime.run.tissue.tissue_blocks), on a worker:
    (chunk index, [[y0, y1, x0, x1], ...])."""
    from cyclepose_deploy.runtime.run.tissue import tissue_blocks

    worker, _ = _open(job)
    return chunk.index, tissue_blocks(worker.source, job.norm, chunk, job.model.lower).tolist()
