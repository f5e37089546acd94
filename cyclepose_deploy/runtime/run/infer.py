"""One image end to end, in memory bounded by the chunk size: outputs checked, image opened and
normalised, the working scale chosen (runtime.run.scale), pass 1 (chunks -> seed ids on disk,
runtime.run.passone), pass 2 (ids -> labels and every other output, runtime.run.passtwo). Outputs
are written under temporary names and renamed only when the run succeeds."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path

from cyclepose_deploy.atomic import atomic_dir, atomic_path, check_writable, sweep_leftovers
from cyclepose_deploy.errors import OptionError, UserError, literal
from cyclepose_deploy.runtime.run import passone, passtwo, scale, warmup
from cyclepose_deploy.runtime.run.context import RunContext
from cyclepose_deploy.runtime.run.diameter import DiameterEstimate
from cyclepose_deploy.runtime.run.result import SegmentResult
from cyclepose_deploy.runtime.run.runfolder import check_run_folder, run_folder
from cyclepose_deploy.runtime.source.formats import check_input_path
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import Slide, sample_normalization


def run(ctx: RunContext) -> SegmentResult:
    """Segment ctx's image into ctx.outputs (module docstring). Raises UserError (OptionError for a
    setting) for bad options and inputs, before any output is written."""
    with ctx:
        _prepare(ctx)
        t0 = time.perf_counter()
        given = scale.given_diameter(ctx)
        scale.choose(ctx, None)  # the estimate measures at the image's own scale
        estimate = DiameterEstimate(given, "given") if given is not None else scale.estimate(ctx)
        scale.choose(ctx, estimate)
        ctx.timed("diameter", t0)
        warmup.join()
        passone.plan(ctx)
        ctx.temps = {p: ctx.stack.enter_context(atomic_path(p)) for p in ctx.outputs.files()}
        if ctx.outputs.zarr is not None:
            ctx.temps[ctx.outputs.zarr] = ctx.stack.enter_context(atomic_dir(ctx.outputs.zarr))
        tiles = passone.segment_chunks(ctx)
        count, labels = passtwo.write(ctx)
        flows, prob = passtwo.flows_and_prob(ctx) if ctx.outputs.flows else (None, None)
    return _result(ctx, count, tiles, labels, flows, prob)


def measure_diameter(ctx: RunContext) -> DiameterEstimate | None:
    """The diameter a run of ctx would use (the given one, or the estimate; None for an empty field),
    without segmenting: the image is opened and normalised, nothing is written."""
    with ctx:
        _open(ctx)
        given = scale.given_diameter(ctx)
        if given is not None:
            return DiameterEstimate(given, "given")
        warmup.start(ctx.stack.callback)
        scale.choose(ctx, None)
        return scale.estimate(ctx)


def _prepare(ctx: RunContext) -> None:
    """Before any work: the outputs may be written, leftovers of killed runs are swept, the cluster is
    reachable, the image opens; then its normalisation and the runner (engine profiles fit the batch)."""
    if ctx.path is not None:
        check_input_path(ctx.path)
    _check_outputs(ctx)
    for folder in sorted({p.parent.resolve() for p in ctx.outputs.all()}):
        removed, kept = sweep_leftovers(folder)
        if removed:
            names = literal(", ".join(removed[:3]))
            ctx.say(f"removed {len(removed)} leftover(s) of interrupted runs in {literal(folder)}: {names}")
        if kept:
            ctx.say(
                f"{len(kept)} leftover(s) of runs on other machines in {literal(folder)} "
                f"({literal(', '.join(kept[:3]))}): remove them once those runs are over"
            )
    ctx.start = time.perf_counter()
    run = ctx.options.run
    if run.scheduler is not None:  # connect before any slide work: an unreachable cluster fails fast
        from cyclepose_deploy.runtime.run.distributed import Cluster

        ctx.cluster = ctx.stack.enter_context(Cluster(run.scheduler, run.threads))
    else:  # the kernels load while the slide is opened and normalised (runtime.run.warmup)
        warmup.start(ctx.stack.callback)
    _open(ctx)


def _open(ctx: RunContext) -> None:
    """Open the image (a file; an array is open already), then its normalisation and the runner."""
    if ctx.source is None:
        assert ctx.path is not None
        ctx.source = Slide(ctx.path, None, ctx.options.image)
        ctx.stack.callback(ctx.source.close)
    ctx.say(f"image: {literal(ctx.source.description)}, pixel size {_size_text(ctx)}")
    for note in ctx.source.notes:
        ctx.say(note)
    percentiles = ctx.options.intensity.norm_percentiles
    if percentiles is not None:
        ctx.model = replace(ctx.model, lower=percentiles[0], upper=percentiles[1])
    t0 = time.perf_counter()
    fixed = ctx.options.intensity.norm_range
    ctx.norm = (
        Normalization.fixed(*fixed)
        if fixed
        else sample_normalization(ctx.source, ctx.model.lower, ctx.model.upper)
    )
    ctx.timed("normalize", t0)
    _runner(ctx)


def _runner(ctx: RunContext) -> None:
    if ctx.runner is None:
        ctx.runner = ctx.stack.enter_context(ctx.model.runner(threads=None))
    tiling = ctx.options.tiling
    limits = ctx.runner.input_metadata().shape_limits
    if limits is not None:  # an engine profile: fit the batch, refuse a tile outside it, square tiles
        ctx.options = ctx.options.updated(batch=min(tiling.batch, limits.max_batch), whole_image=False)
        limits.check(ctx.options.tiling.batch, tiling.tile, tiling.tile)
    elif ctx.runner.device != "cpu" and tiling.whole_image:
        # GPU providers tune (cuDNN) or build (TensorRT EP) per input shape: one square tile shape
        ctx.options = ctx.options.updated(whole_image=False)
    largest = ctx.model.diameter[1]
    if tiling.overlap < largest:
        ctx.say(
            f"warning: {{overlap}} {tiling.overlap} px is less than the largest nucleus the model expects "
            f"({largest:.0f} px): nuclei on tile borders lose context and may be split or cut; "
            f"use {{overlap={max(32, math.ceil(largest))}}} or more"
        )


def _check_outputs(ctx: RunContext) -> None:
    outputs = ctx.outputs
    _make_folders(ctx, {p.parent for p in outputs.all()})
    for path in outputs.files():
        check_writable(path)
    if outputs.zarr is not None:
        from cyclepose_deploy.runtime.outputs.omezarr import check_available

        check_writable(outputs.zarr, folder_ok=True)
        check_available()
        if outputs.labels is None:
            raise OptionError(
                "zarr", "{zarr} is written from the labels file: give the labels output as well"
            )
    if outputs.rois is not None:
        from cyclepose_deploy.runtime.outputs.vectors import check_rois_available

        check_rois_available()
    inputs = {ctx.path.resolve()} if ctx.path is not None else set()
    if len({p.resolve() for p in outputs.all()} | inputs) != len(outputs.all()) + len(inputs):
        raise UserError("output paths must differ from each other and from the slide: choose distinct names")
    overwrite = ctx.options.run.overwrite
    for path in outputs.all():
        if not overwrite and (path.exists() or path.is_symlink()):
            raise OptionError(
                "overwrite",
                f"output {literal(path)} already exists: pass {{overwrite=True}} to replace it, or choose "
                "another path",
            )
    if outputs.labels is not None:
        check_run_folder(run_folder(outputs.labels), ctx.options.run.resume, overwrite)


def _make_folders(ctx: RunContext, folders: set[Path]) -> None:
    """Create the outputs' missing folders (as a batch's OUT folder is created); those still empty when
    the run ends (it failed before writing) are removed again."""
    for folder in sorted(folders):
        if folder.exists() or folder.is_symlink():
            continue
        missing = [folder, *(p for p in folder.parents if not p.exists())]
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise UserError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
        ctx.stack.callback(_remove_if_empty, sorted(missing, key=lambda p: len(p.parts), reverse=True))


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes


def _size_text(ctx: RunContext) -> str:
    size = ctx.source.pixel_size
    if size is None:
        return "unknown (give {pixel_size} for µm in the object table)"
    y, x = size
    where = "given" if size != ctx.source.file_pixel_size else "from the file"
    return f"{x:.4g} x {y:.4g} µm ({where})"


def _result(ctx: RunContext, count: int, tiles: int, labels, flows, prob) -> SegmentResult:  # type: ignore[no-untyped-def]
    assert ctx.working is not None and ctx.runner is not None
    job = ctx.job()
    return SegmentResult(
        count,
        ctx.source.shape,
        time.perf_counter() - ctx.start,
        len(ctx.chunks),
        tiles,
        job.grid.total,
        ctx.times,
        ctx.diameter,
        ctx.scale,
        ctx.source.pixel_size,
        ctx.source.description,
        labels,
        flows,
        prob,
        skipped=ctx.skipped,
        resumed=len(ctx.done),
        ran=len(ctx.todo),
        workers=ctx.cluster.workers if ctx.cluster is not None else 0,
        outputs=ctx.outputs.all(),
        model=ctx.model.describe(),
    )
