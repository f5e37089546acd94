"""Pass 1 over the chunks of one image: plan them (working grid, run folder, store, which chunks reach
tissue: runtime.run.tissue), then run network and dynamics on those still to do, in this process
(runtime.run.pipeline, threads) or on a Dask cluster (runtime.run.distributed), each finished chunk
into the store (runtime.run.scratch)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from cyclepose_deploy.atomic import scratch_prefix, writing
from cyclepose_deploy.errors import OptionError, UserError, literal
from cyclepose_deploy.runtime.run import runfolder, scratch
from cyclepose_deploy.runtime.run.context import RunContext
from cyclepose_deploy.runtime.run.pipeline import Pipeline
from cyclepose_deploy.runtime.run.scratch import ScratchStore
from cyclepose_deploy.runtime.tiling.chunks import Chunk, chunk_windows


def plan(ctx: RunContext) -> None:
    """Chunks of the working grid, the run folder (resumed or new) and its store, and the chunks to
    run (ctx.todo): not finished yet and, with skip_empty, with tissue in reach."""
    assert ctx.working is not None
    job = ctx.job()
    ctx.chunks = chunk_windows(ctx.working.shape, job.block, job.halo)
    if ctx.outputs.labels is None or ctx.ref is None:  # in-memory labels (the API): nothing to resume
        ctx.folder = Path(ctx.stack.enter_context(tempfile.TemporaryDirectory(prefix=scratch_prefix())))
        resumed = False
    else:
        ctx.folder = runfolder.run_folder(ctx.outputs.labels)
        run = ctx.options.run
        opened = runfolder.open_run(
            ctx.folder, runfolder.fingerprint(ctx), run.resume, run.overwrite, ctx.say
        )
        resumed, ctx.token = ctx.stack.enter_context(opened)
    if resumed:
        resumed = _whole_store(ctx, job.keep_prob, job.keep_flows)
    ctx.store = ScratchStore(
        ctx.folder, ctx.working.shape, job.keep_prob, job.block, job.keep_flows, not resumed
    )
    ctx.done = ctx.store.done() if resumed else set()
    ctx.todo = _to_run(ctx)


def _whole_store(ctx: RunContext, keep_prob: bool, keep_flows: bool) -> bool:
    """Whether the interrupted run's store can be resumed. A folder killed before its store existed
    starts anew; a store or marker changed since (damaged, tampered with) is refused unless the user
    asked to overwrite, because resuming it would give wrong labels without a word."""
    assert ctx.folder is not None and ctx.working is not None
    if not scratch.finished_chunks(ctx.folder) and not (ctx.folder / "ids.zarr").is_dir():
        return False
    problem = scratch.damage(ctx.folder, ctx.working.shape, keep_prob, keep_flows)
    if problem is None:
        return True
    if not ctx.options.run.overwrite:
        raise OptionError(
            "resume",
            f"the interrupted run in {literal(ctx.folder)} is damaged ({problem}): "
            "pass {overwrite=True} to start over",
        )
    ctx.say(f"the interrupted run in {literal(ctx.folder)} is damaged ({problem}): starting over")
    scratch.clear(ctx.folder)
    return False


def _to_run(ctx: RunContext) -> list[Chunk]:
    """The chunks still to segment. The tissue decision is saved in the run folder, so a resumed run
    does not read the slide for it again."""
    t0 = time.perf_counter()
    wanted = [True] * len(ctx.chunks)
    if ctx.options.run.skip_empty:
        from cyclepose_deploy.runtime.run.tissue import chunks_to_run

        keep_decision = ctx.ref is not None and ctx.folder is not None
        saved = runfolder.load_tissue(ctx.folder, len(ctx.chunks)) if keep_decision else None
        wanted = saved if saved is not None else chunks_to_run(ctx.chunks, _tissue(ctx))
        if keep_decision and saved is None:
            runfolder.save_tissue(ctx.folder, wanted)  # type: ignore[arg-type]
    ctx.skipped = wanted.count(False)
    ctx.timed("tissue", t0)
    return [c for c, w in zip(ctx.chunks, wanted, strict=True) if w and c.index not in ctx.done]


def _tissue(ctx: RunContext) -> list[np.ndarray]:
    """Per chunk, its core's blocks with tissue (runtime.run.tissue.tissue_blocks)."""
    from cyclepose_deploy.runtime.run.tissue import tissue_blocks

    assert ctx.working is not None and ctx.norm is not None
    blocks: list[np.ndarray] = [np.zeros((0, 4), np.int64)] * len(ctx.chunks)
    if ctx.cluster is None:
        for position, chunk in enumerate(ctx.chunks):
            blocks[position] = tissue_blocks(ctx.working, ctx.norm, chunk, ctx.model.lower)
            ctx.progress("tissue", 1, len(ctx.chunks))
        return blocks
    from cyclepose_deploy.runtime.run.distributed import tissue_task

    def record(result: tuple[int, list[list[int]]]) -> None:
        blocks[result[0]] = np.array(result[1], np.int64).reshape(-1, 4)
        ctx.progress("tissue", 1, len(ctx.chunks))

    ctx.cluster.map(tissue_task, ctx.job(), ctx.chunks, record)
    return blocks


def segment_chunks(ctx: RunContext) -> int:
    """Segment ctx.todo into the store, here or on the cluster; returns the network tiles run."""
    assert ctx.store is not None and ctx.folder is not None
    if ctx.cluster is not None:
        return _on_cluster(ctx)
    if ctx.prepared is not None:  # segmented by the diameter estimate (scale._whole_field)
        scale, prepared = ctx.prepared
        if scale == ctx.scale and [c.window for c in ctx.todo] == [prepared.chunk.window]:
            with writing(f"temporary data in {ctx.folder.parent}"):
                ctx.store.write(prepared)
            return 1
    pipe = Pipeline(ctx.worker(), ctx.todo, ctx.folder / "tiles")
    total = pipe.plan.tiles_run
    pipe.on_tiles = lambda n: ctx.progress("network", n, total)
    with writing(f"temporary data in {ctx.folder.parent}"):
        for result in pipe.results():
            t = time.perf_counter()
            ctx.store.write(result)
            pipe.times["scratch"] += time.perf_counter() - t
    ctx.times.update(pipe.times)
    return pipe.tiles_run


def _on_cluster(ctx: RunContext) -> int:
    from cyclepose_deploy.runtime.run.distributed import chunk_task

    assert ctx.store is not None
    t0 = time.perf_counter()
    tiles = 0

    def record(result: tuple[int, int]) -> None:
        nonlocal tiles
        tiles += result[1]
        ctx.progress("chunks", 1, len(ctx.todo))

    ctx.cluster.map(chunk_task, ctx.job(), ctx.todo, record)
    ctx.timed("cluster", t0)
    missing = {c.index for c in ctx.todo} - ctx.store.done()
    if missing:  # the workers wrote somewhere else: no shared file system
        raise UserError(
            f"{len(missing)} of {len(ctx.todo)} chunks did not arrive in {ctx.store.folder}: every "
            "Dask worker must reach the slide, the model and the output folder under the same paths "
            "(a shared file system)"
        )
    return tiles
