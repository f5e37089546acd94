"""`cyclepose infer` end to end: open the slide, pass 1 (chunks -> seed ids on disk), pass 2 (ids ->
labels BigTIFF, object table, preview, probability), every output written atomically."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy import defaults
from cyclepose_deploy.atomic import (
    atomic_dir,
    atomic_path,
    check_writable,
    scratch_prefix,
    sweep_leftovers,
    writing,
)
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.runtime.outputs.objects import ObjectTable
from cyclepose_deploy.runtime.outputs.preview import Preview
from cyclepose_deploy.runtime.outputs.tiff import (
    BlockObserver,
    label_blocks,
    pyramid_shapes,
    resampled_blocks,
    write_tiled_tiff,
)
from cyclepose_deploy.runtime.run.chunks import Settings, chunk_windows, halo_for
from cyclepose_deploy.runtime.run.diameter import MAX_SCALE, MIN_SCALE, DiameterEstimate, estimate_diameter
from cyclepose_deploy.runtime.run.passone import PassOne, Progress, RunOptions, SlideRef
from cyclepose_deploy.runtime.run.runfolder import (
    check_run_folder,
    file_identity,
    open_run,
    package_version,
    run_folder,
)
from cyclepose_deploy.runtime.run.scratch import ScratchStore
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import (
    ScaledSource,
    Slide,
    SlideOptions,
    Source,
    sample_normalization,
)
from cyclepose_deploy.runtime.tiling.grid import TileGrid


@dataclass(frozen=True)
class Outputs:
    """Files to write; `labels` None keeps the labels in memory (Summary.labels), for the Python API."""

    labels: Path | None
    objects: Path | None = None
    preview: Path | None = None
    prob: Path | None = None
    geojson: Path | None = None  # QuPath GeoJSON outlines (runtime.vectors)
    rois: Path | None = None  # ImageJ ROI set (.zip)
    zarr: Path | None = None  # OME-Zarr folder with labels/nuclei (runtime.omezarr)

    def files(self) -> list[Path]:
        paths = (self.labels, self.objects, self.preview, self.prob, self.geojson, self.rois)
        return [p for p in paths if p is not None]

    def all(self) -> list[Path]:
        return [*self.files(), *([self.zarr] if self.zarr is not None else [])]


@dataclass
class Summary:
    """What the run did, for the final report."""

    objects: int
    shape: tuple[int, int]
    seconds: float
    chunks: int
    tiles_run: int
    tiles_grid: int
    times: dict[str, float] = field(default_factory=dict)
    diameter: DiameterEstimate | None = None
    scale: float = 1.0
    pixel_size: tuple[float, float] | None = None  # (y, x) µm of the segmented image, None if unknown
    image: str = ""  # which series / level / plane was segmented
    labels: np.ndarray | None = field(default=None, repr=False)  # (H, W) uint32 when kept in memory
    skipped: int = 0  # chunks without tissue, not sent to the network
    resumed: int = 0  # chunks finished by an interrupted run and kept
    ran: int = 0  # chunks segmented by this run
    workers: int = 0  # Dask workers (0: this process)

    @property
    def mpix_per_s(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)

    @property
    def tile_overhead(self) -> float:
        """Network tiles run more than once because chunk halos overlap (0.0 = none)."""
        return self.tiles_run / max(self.tiles_grid, 1) - 1.0


def run_infer(
    slide_path: str | Path,
    model: Model,
    outputs: Outputs,
    settings: Settings,
    channel: int | None = None,
    diameter: float | None = None,
    progress: Progress | None = None,
    norm_percentiles: tuple[float, float] | None = None,
    norm_range: tuple[float, float] | None = None,
    *,
    options: SlideOptions | None = None,
    diameter_um: float | None = None,
    overwrite: bool = True,
    warn: Callable[[str], None] | None = None,
    runner: Runner | None = None,
    run: RunOptions | None = None,
) -> Summary:
    """Segment a slide of any size in memory bounded by the chunk size.

    diameter: median nucleus diameter in slide px (None: estimated, see runtime.diameter);
    diameter_um: the same in µm (needs a pixel size, from the file or options.pixel_size);
    norm_percentiles: (low, high) percentiles instead of the model's; norm_range: fixed (min, max)
    intensities mapped to 0 and 1 instead of statistics of the slide; options: which series, level,
    plane and channel of the file (runtime.slide.SlideOptions); overwrite: False refuses outputs that
    exist; warn: called with each note for the user (chosen series, empty channel, small overlap);
    runner: an active runner of `model` to reuse (batches of images load the model once); run: the
    scheduler, resume and empty-space options (RunOptions).
    Raises UserError for bad options and inputs, before any output is written."""
    say = warn or (lambda text: None)
    run = replace(run or RunOptions(), overwrite=overwrite)
    _check_outputs(outputs, slide_path, overwrite)
    if outputs.labels is not None:
        check_run_folder(run_folder(outputs.labels), run.resume, overwrite)
    model, fixed = check_settings(model, settings, diameter, diameter_um, norm_percentiles, norm_range, say)
    for folder in sorted({p.parent.resolve() for p in outputs.all()}):
        removed, kept = sweep_leftovers(folder)
        if removed:
            say(
                f"removed {len(removed)} leftover(s) of interrupted runs in {folder}: "
                + ", ".join(removed[:3])
            )
        if kept:
            say(
                f"{len(kept)} leftover(s) of runs on other machines in {folder} ({', '.join(kept[:3])}): "
                "remove them once those runs are over"
            )
    start = time.perf_counter()
    cluster = None
    slide = None
    try:
        if run.scheduler is not None:  # connect before any slide work: an unreachable cluster fails fast
            from cyclepose_deploy.runtime.run.distributed import Cluster

            cluster = Cluster(run.scheduler, run.threads)
        slide = Slide(slide_path, channel, options)
        say(f"image: {slide.description}, pixel size {_size_text(slide)}")
        for note in slide.notes:
            say(note)
        missing = (
            f"--diameter-um needs the pixel size, and {slide.path.name} does not say it: "
            "add --pixel-size (µm) or give --diameter in px"
        )
        diameter = diameter_px(diameter, diameter_um, slide.pixel_size, model, missing)
        return run_source(
            slide,
            model,
            outputs,
            settings,
            diameter,
            progress or (lambda *a: None),
            start,
            fixed,
            runner,
            run,
            SlideRef(str(slide.path), channel, options or SlideOptions()),
            say,
            cluster,
        )
    finally:
        if slide is not None:
            slide.close()
        if cluster is not None:
            cluster.close()


def check_settings(
    model: Model,
    settings: Settings,
    diameter: float | None,
    diameter_um: float | None,
    norm_percentiles: tuple[float, float] | None,
    norm_range: tuple[float, float] | None,
    say: Callable[[str], None],
) -> tuple[Model, Normalization | None]:
    """Validate the options before any work: (the model with the user's percentiles, the fixed
    normalisation or None). Raises UserError naming the option and the allowed range."""
    for value, option, unit in (
        (diameter, "--diameter", "pixels, e.g. 17"),
        (diameter_um, "--diameter-um", "µm, e.g. 6.5"),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{option} {value} must be a positive number of {unit}")
    if diameter is not None and diameter_um is not None:
        raise UserError("--diameter and --diameter-um both given: pass one")
    for value, option in (
        (settings.cellprob_threshold, "--cellprob-threshold"),
        (settings.flow_threshold, "--flow-threshold"),
    ):
        if not math.isfinite(value):
            raise UserError(f"{option} {value} must be a finite number (defaults: cellprob 0.0, flow 0.4)")
    if settings.flow_threshold < 0:
        raise UserError(
            f"--flow-threshold {settings.flow_threshold} must be >= 0 (0 disables the check; default 0.4)"
        )
    if norm_percentiles is not None:
        low, high = norm_percentiles
        if not (0.0 <= low < high <= 100.0):
            raise UserError(f"--norm-percentiles {low:g},{high:g} needs 0 <= LO < HI <= 100, e.g. 1,99.8")
        model = replace(model, lower=float(low), upper=float(high))
    fixed = Normalization.fixed(*norm_range) if norm_range is not None else None
    if settings.overlap < model.diameter[1]:
        say(
            f"warning: --overlap {settings.overlap} px is less than the largest nucleus the model expects "
            f"({model.diameter[1]:.0f} px): nuclei on tile borders lose context and may be split or cut; "
            f"use --overlap {max(defaults.OVERLAP, math.ceil(model.diameter[1]))} or more"
        )
    return model, fixed


def diameter_px(
    diameter: float | None,
    diameter_um: float | None,
    pixel_size: tuple[float, float] | None,
    model: Model,
    missing: str,
) -> float | None:
    """The given diameter in px: `diameter`, or `diameter_um` over the pixel size (geometric mean of
    y and x); None when neither is given. UserError `missing` without a pixel size, and (check_scale)
    when it would rescale the slide beyond the model's range."""
    if diameter_um is not None:
        if pixel_size is None:
            raise UserError(missing)
        diameter = diameter_um / math.sqrt(pixel_size[0] * pixel_size[1])
    if diameter is not None:
        check_scale(diameter, model)
    return diameter


def check_scale(diameter: float, model: Model) -> None:
    """A given diameter rescales the slide by train_diameter / diameter: keep it within the range the
    automatic estimate uses (MIN_SCALE..MAX_SCALE) so a typo cannot ask for a 50x larger slide."""
    low, high = model.train_diameter / MAX_SCALE, model.train_diameter / MIN_SCALE
    if not low <= diameter <= high:
        raise UserError(
            f"diameter {diameter:.3g} px would rescale the slide by {model.train_diameter / diameter:.3g}x; "
            f"this model accepts {low:.3g}..{high:.3g} px (it was trained at {model.train_diameter:.3g} px): "
            "check the value and its unit (--diameter is in px, --diameter-um in µm)"
        )


def _check_outputs(outputs: Outputs, slide_path: str | Path, overwrite: bool) -> None:
    for path in outputs.files():
        check_writable(path)
    if outputs.zarr is not None:
        from cyclepose_deploy.runtime.outputs.omezarr import check_available

        check_writable(outputs.zarr, folder_ok=True)
        check_available()
        if outputs.labels is None:
            raise UserError("--zarr is written from the labels file: give -o as well")
    if len({p.resolve() for p in outputs.all()} | {Path(slide_path).resolve()}) != len(outputs.all()) + 1:
        raise UserError("output paths must differ from each other and from the slide: choose distinct names")
    for path in outputs.all():
        if not overwrite and (path.exists() or path.is_symlink()):
            raise UserError(
                f"output {path} already exists: pass --overwrite to replace it, or choose another path"
            )


def _size_text(slide: Slide) -> str:
    if slide.pixel_size is None:
        return "unknown (give --pixel-size for µm in the object table)"
    y, x = slide.pixel_size
    source = "given" if slide.pixel_size != slide.file_pixel_size else "from the file"
    return f"{x:.4g} x {y:.4g} µm ({source})"


def run_source(
    slide: Any,
    model: Model,
    outputs: Outputs,
    settings: Settings,
    diameter: float | None,
    progress: Progress,
    start: float,
    fixed: Normalization | None = None,
    shared_runner: Runner | None = None,
    run: RunOptions | None = None,
    ref: SlideRef | None = None,
    say: Callable[[str], None] | None = None,
    cluster: Any = None,
) -> Summary:
    """Segment an open image (a runtime.slide.Slide, or any Source with shape, read, pixel_size and
    description) into `outputs`; the options were checked by `check_settings`. A run with a labels
    file keeps its pass-1 store in the run folder (runtime.runfolder); `ref` reopens the slide in
    Dask workers (`cluster`, a runtime.distributed.Cluster) and identifies it for --resume."""
    run = run or RunOptions()
    say = say or (lambda text: None)
    t0 = time.perf_counter()
    norm = fixed if fixed is not None else sample_normalization(slide, model.lower, model.upper)
    settings = replace(
        settings,
        flow_scale=model.flow_scale,
        max_diameter=model.diameter[1],
        max_extent=model.max_extent,
        noise=norm.noise,
    )
    times = {"normalize": time.perf_counter() - t0}
    with contextlib.ExitStack() as stack:
        runner = shared_runner if shared_runner is not None else stack.enter_context(model.runner())
        settings = replace(settings, channels=runner.channels or 1)
        if runner.shape_limits is not None:  # an engine profile: fit the batch, refuse a tile outside it
            settings = replace(settings, batch=min(settings.batch, runner.shape_limits.max_batch))
            runner.shape_limits.check(settings.batch, settings.tile, settings.tile)
        t0 = time.perf_counter()
        estimate = _diameter(slide, norm, runner, settings, model, diameter)
        times["diameter"] = time.perf_counter() - t0
        scale = model.train_diameter / estimate.diameter if estimate is not None else 1.0
        source: Source = slide if abs(scale - 1.0) < 1e-3 else ScaledSource(slide, scale)
        chunks = chunk_windows(source.shape, settings.chunk, halo_for(settings))
        if outputs.labels is None or ref is None:  # in-memory labels (the API): nothing to resume
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=scratch_prefix())))
            resumed, token = False, ""
        else:
            folder = run_folder(outputs.labels)
            fingerprint = {
                "package": package_version(),
                "slide": file_identity(ref.path),
                "image": slide.description,
                "model": {**file_identity(model.path), "format": model.format, "precision": model.precision},
                "device": getattr(runner, "device", "cpu"),
                "channel": ref.channel,
                "options": ref.options,
                "settings": settings,
                "normalization": norm,
                "scale": scale,
                "shape": source.shape,
                "chunks": len(chunks),
                "prob": outputs.prob is not None,
                "skip_empty": run.skip_empty,
            }
            resumed, token = stack.enter_context(
                open_run(folder, fingerprint, run.resume, run.overwrite, say)
            )
        temps = {p: stack.enter_context(atomic_path(p)) for p in outputs.files()}
        if outputs.zarr is not None:
            temps[outputs.zarr] = stack.enter_context(atomic_dir(outputs.zarr))
        resumed = resumed and (folder / "ids.zarr").is_dir()  # killed before its store existed: anew
        store = ScratchStore(
            folder, source.shape, outputs.prob is not None, settings.chunk, create=not resumed
        )
        done = store.done() if resumed else set()
        work = PassOne(
            source, norm, runner, settings, store, progress, times, run, ref, model, scale, cluster, token
        )
        todo = work.to_run(chunks, folder if ref is not None else None, done)
        tiles_run = work.segment(todo)
        count, labels = _pass_two(slide, norm, store, outputs, temps, progress, times)
    grid = TileGrid(source.shape, settings.tile, settings.overlap)
    return Summary(
        count,
        slide.shape,
        time.perf_counter() - start,
        len(chunks),
        tiles_run,
        grid.total,
        times,
        estimate,
        scale,
        slide.pixel_size,
        slide.description,
        labels,
        skipped=work.skipped,
        resumed=len(done),
        ran=len(todo),
        workers=work.workers,
    )


def _diameter(
    slide: Slide, norm: Normalization, runner: object, settings: Settings, model: Model, given: float | None
) -> DiameterEstimate | None:
    """The user's --diameter, else the automatic estimate (None: an empty field, keep the model's scale)."""
    if given is not None:
        return DiameterEstimate(float(given), "given")
    estimate = estimate_diameter(slide, norm, runner, settings, model.train_diameter)
    if estimate is None:
        return None
    low, high = model.train_diameter / MAX_SCALE, model.train_diameter / MIN_SCALE
    return replace(estimate, diameter=float(min(max(quantize_diameter(estimate.diameter), low), high)))


DIAMETER_STEPS_PER_OCTAVE = 16  # estimates snap to a 4.4 % geometric grid


def quantize_diameter(diameter: float) -> float:
    """The estimate on a geometric grid (2^(1/16) steps): segmentation does not care about +/-2 %, but
    a grid makes the run reproducible when the estimate wobbles by a hair (one changed pixel must not
    rescale the whole slide and move every outline)."""
    steps = DIAMETER_STEPS_PER_OCTAVE
    return float(2.0 ** (round(math.log2(diameter) * steps) / steps))


@contextlib.contextmanager
def _labels_reader(
    outputs: Outputs, temps: dict[Path, Path], in_memory: np.ndarray | None
) -> Iterator[Callable[[int, int, int, int], np.ndarray]]:
    """Windows of the final labels: the in-memory array, or the labels file just written."""
    if in_memory is not None:
        yield lambda y0, y1, x0, x1: in_memory[y0:y1, x0:x1]
        return
    import tifffile
    import zarr

    assert outputs.labels is not None
    with tifffile.TiffFile(temps[outputs.labels]) as tif:
        array = zarr.open(tif.series[0].aszarr(level=0), mode="r")
        yield lambda y0, y1, x0, x1: np.asarray(array[y0:y1, x0:x1])


def _outlines(
    outputs: Outputs, temps: dict[Path, Path], table: ObjectTable, in_memory: np.ndarray | None, slide: Any
) -> None:
    """GeoJSON / ROI outlines from the final labels (runtime.vectors)."""
    from cyclepose_deploy.runtime.outputs.vectors import write_outlines

    geojson = temps.get(outputs.geojson) if outputs.geojson else None
    rois = temps.get(outputs.rois) if outputs.rois else None
    with _labels_reader(outputs, temps, in_memory) as read, writing("the outlines"):
        scale = getattr(slide, "level_scale", (1.0, 1.0))
        write_outlines(read, slide.shape, table.rows(), geojson, rois, slide.pixel_size, scale)


def _pass_two(
    slide: Slide,
    norm: Normalization,
    store: ScratchStore,
    outputs: Outputs,
    temps: dict[Path, Path],
    progress: Progress,
    times: dict[str, float],
) -> tuple[int, np.ndarray | None]:
    """Labels 1..N block by block into the labels file (or an in-memory array when outputs.labels is
    None), feeding the object table and preview. Returns (N, the in-memory labels or None)."""
    t = time.perf_counter()
    table = store.id_table()
    want_table = outputs.objects or outputs.geojson or outputs.rois
    objects = ObjectTable(len(table), slide, slide.pixel_size) if want_table else None
    preview = Preview(slide.shape, slide, norm) if outputs.preview else None
    observers: list[BlockObserver] = [o.observe for o in (objects, preview) if o is not None]
    rows = slide.shape[0]
    observers.append(lambda r0, c0, block: progress("labels", block.shape[0] if c0 == 0 else 0, rows))
    blocks = label_blocks(store.ids, table, slide.shape)
    in_memory = None
    if outputs.labels is None:
        in_memory = np.zeros(slide.shape, np.uint32)
        for r0, c0, block in blocks:
            for observe in observers:
                observe(r0, c0, block)
            in_memory[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    else:
        with writing(outputs.labels):
            # nearest-neighbour levels, straight from the seed ids (labels are never averaged)
            levels = [(label_blocks(store.ids, table, shape), shape) for shape in pyramid_shapes(slide.shape)]
            write_tiled_tiff(
                temps[outputs.labels], blocks, slide.shape, "uint32", slide.pixel_size, observers, levels
            )
    if objects is not None and outputs.objects is not None:
        objects.save_csv(temps[outputs.objects])
    if objects is not None and (outputs.geojson or outputs.rois):
        _outlines(outputs, temps, objects, in_memory, slide)
    if outputs.zarr is not None and outputs.labels is not None:
        from cyclepose_deploy.runtime.outputs.omezarr import write_labels_zarr

        with writing(outputs.zarr):
            write_labels_zarr(temps[outputs.labels], temps[outputs.zarr], slide.pixel_size)
    if preview is not None and outputs.preview is not None:
        with _labels_reader(outputs, temps, in_memory) as read:
            preview.save(temps[outputs.preview], read)
    if store.prob is not None and outputs.prob is not None:
        blocks = resampled_blocks(store.prob, slide.shape)
        with writing(outputs.prob):
            write_tiled_tiff(temps[outputs.prob], blocks, slide.shape, "uint8", slide.pixel_size)
    times["write"] = time.perf_counter() - t
    return len(table), in_memory
