"""`cyclepose infer`: segment a slide of any size into an instance label BigTIFF (plus object table,
preview and probability map), streaming chunk by chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cyclepose_deploy import defaults
from cyclepose_deploy.cli.common import console, user_errors
from cyclepose_deploy.errors import OptionError, UserError


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def infer(
        slides: list[Path] = typer.Argument(
            ...,
            help="Input image(s): TIFF / BigTIFF / OME-TIFF / ImageJ TIFF, OME-Zarr or zarr array, PNG / "
            "JPEG / BMP; a folder or a quoted glob segments every image in it (with --out-dir).",
        ),
        engine: Path = typer.Option(
            ...,
            "--model",
            "--engine",
            help="An export folder, an .onnx, a TensorRT .engine/.plan/.trt, or a model name (nuclei, synth) "
            "or checkpoint (.pt, Cellpose 3) exported once into a cache; --engine is an alias.",
        ),
        out: Path | None = typer.Option(
            None, "-o", "--output", help="Labels to write for one image (uint32 tiled OME BigTIFF)."
        ),
        out_dir: Path | None = typer.Option(
            None,
            "--out-dir",
            help="Batch mode: write NAME.labels.ome.tif and NAME.objects.csv per image, and summary.csv.",
        ),
        recursive: bool = typer.Option(False, "--recursive", help="Batch mode: also search sub-folders."),
        tile: int = typer.Option(
            defaults.TILE,
            "--tile",
            help=f"Network tile size (multiple of {defaults.SIZE_MULTIPLE}); with --whole-image on CPU the "
            "smallest side tried.",
        ),
        overlap: int = typer.Option(
            defaults.OVERLAP, "--overlap", help="Tile overlap in pixels, blended with a taper."
        ),
        batch_size: int = typer.Option(
            defaults.BATCH,
            "--batch",
            help="Tiles of --tile px per network call (larger fitted tiles go fewer per call).",
        ),
        chunk: int = typer.Option(
            defaults.CHUNK,
            "--chunk",
            help="Largest chunk side for the dynamics (px); bounds the memory. A longest side over 1024 px "
            "is cut into at least 2 equal chunks, so the dynamics overlap the network.",
        ),
        channel: int | None = typer.Option(
            None, "--channel", help="Channel of a multi-channel or RGB image (0-based)."
        ),
        series: int | None = typer.Option(
            None, "--series", help="Series of a multi-series file (0-based). Default: the largest image."
        ),
        level: int | None = typer.Option(None, "--level", help="Pyramid level (0 = full resolution)."),
        z: int | None = typer.Option(None, "--z", help="Plane of a Z stack (0-based)."),
        t: int | None = typer.Option(None, "--t", help="Time point of a time series (0-based)."),
        plane: int | None = typer.Option(
            None, "--plane", help="Page of a multi-page stack without Z/T axes (0-based)."
        ),
        pixel_size: str | None = typer.Option(
            None, "--pixel-size", help="Pixel size in µm, S or Y,X; overrides the file's."
        ),
        diameter_um: float | None = typer.Option(
            None, "--diameter-um", help="Median nucleus diameter in µm (needs the pixel size)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist."),
        diameter: float | None = typer.Option(
            None,
            "--diameter",
            help="Median nucleus diameter in px; the slide is rescaled to the model's. Default: estimated "
            "per slide (reported in the summary); in batch mode the first image's estimate is each "
            "image's first guess, kept after one check pass where its nuclei measure alike.",
        ),
        diameter_fields: int | None = typer.Option(
            None,
            "--diameter-fields",
            help="Batch mode: estimate the diameter once, from the first N images (one acquisition imaged "
            "alike), and use it for all of them.",
        ),
        tta: bool = typer.Option(
            False,
            "--tta",
            help="Test-time augmentation: each tile also runs flipped in y, in x and both, flows averaged "
            "(Cellpose's augment); about 4x the network time.",
        ),
        whole_image: bool = typer.Option(
            True,
            "--whole-image/--no-whole-image",
            help="Fit the tiles to the image (CPU only): one of at most 1024x1024 px in area (after "
            "rescaling and padding) and one --chunk runs as one tile of its own shape (no seams, about half "
            "the network work of 256 px tiles on a 520x696 field); a larger one as square tiles of --tile "
            "to 480 px (at most --chunk), the side that covers it with the fewest network pixels. "
            "--no-whole-image: always --tile tiles.",
        ),
        norm_percentiles: str | None = typer.Option(
            None, "--norm-percentiles", help="LO,HI percentiles mapped to 0 and 1 (default: the model's)."
        ),
        norm_range: str | None = typer.Option(
            None, "--norm-range", help="MIN,MAX fixed intensities mapped to 0 and 1 (plates imaged alike)."
        ),
        cellprob_threshold: float = typer.Option(
            defaults.CELLPROB_THRESHOLD, "--cellprob-threshold", help="Logit threshold."
        ),
        flow_threshold: float = typer.Option(
            defaults.FLOW_THRESHOLD, "--flow-threshold", help="Max flow error per object."
        ),
        min_size: int = typer.Option(
            defaults.MIN_SIZE, "--min-size", help="Smaller nuclei are removed (px, on the model's scale)."
        ),
        exclude_on_edges: bool = typer.Option(
            False, "--exclude-on-edges", help="Drop nuclei that touch the image's edge (Cellpose's option)."
        ),
        objects: Path | None = typer.Option(None, "--objects", help="Object table CSV, one row per nucleus."),
        preview: Path | None = typer.Option(
            None, "--preview", help="Downsampled PNG with outlines (batch mode: OUT/NAME.preview.png)."
        ),
        prob: Path | None = typer.Option(None, "--prob", help="Probability map (uint8 tiled BigTIFF)."),
        geojson: Path | None = typer.Option(
            None, "--geojson", help="QuPath GeoJSON: one detection per nucleus (outline, measurements)."
        ),
        rois: Path | None = typer.Option(
            None, "--rois", help="ImageJ/Fiji ROI set (.zip), one ROI per nucleus."
        ),
        zarr_out: Path | None = typer.Option(
            None,
            "--zarr",
            help="Also write the labels as OME-Zarr (multiscale labels/nuclei; needs ome-zarr).",
        ),
        scheduler: str | None = typer.Option(
            None,
            "--scheduler",
            help="Run the chunks on Dask: local (a worker per core), local:N, or a scheduler address "
            "tcp://HOST:PORT. Default: this process.",
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Finish an interrupted run from LABELS.run, running only missing chunks."
        ),
        skip_empty: bool = typer.Option(
            True,
            "--skip-empty/--no-skip-empty",
            help="Chunks whose windows hold no tissue (no 8x8 px mean 0.05 plus a noise margin above the "
            "background, in normalised units) skip the network.",
        ),
        threads: int | None = typer.Option(
            None,
            "--threads",
            help="ONNX Runtime threads (per Dask worker with --scheduler). Default: all cores, split "
            "between local workers.",
        ),
        summary_json: Path | None = typer.Option(
            None, "--summary-json", help="Also write the run summary (objects, MPix/s, stage times) as JSON."
        ),
    ) -> None:
        """Segment nuclei on a slide of any size in bounded memory."""
        from cyclepose_deploy.api import Segmenter
        from cyclepose_deploy.cli import batch
        from cyclepose_deploy.cli.common import flag
        from cyclepose_deploy.runtime.run.options import InferOptions
        from cyclepose_deploy.runtime.source.units import parse_pixel_size

        options = InferOptions.of(
            tile=tile,
            overlap=overlap,
            batch=batch_size,
            chunk=chunk,
            cellprob_threshold=cellprob_threshold,
            flow_threshold=flow_threshold,
            min_size=min_size,
            exclude_on_edges=exclude_on_edges,
            diameter=diameter,
            diameter_um=diameter_um,
            diameter_fields=diameter_fields,
            tta=tta,
            whole_image=whole_image,
            norm_percentiles=_pair(norm_percentiles, "norm_percentiles", "1,99.8"),
            norm_range=_pair(norm_range, "norm_range", "100,4000"),
            channel=channel,
            series=series,
            level=level,
            z=z,
            t=t,
            plane=plane,
            pixel_size=parse_pixel_size(pixel_size) if pixel_size else None,
            scheduler=scheduler,
            resume=resume,
            skip_empty=skip_empty,
            threads=threads,
            overwrite=overwrite,
        )
        outputs = {
            "objects": objects,
            "preview": preview,
            "prob": prob,
            "geojson": geojson,
            "rois": rois,
            "zarr": zarr_out,
        }
        if summary_json is not None:
            from cyclepose_deploy.atomic import check_writable

            check_writable(summary_json)
        images, batch_mode = batch.expand_inputs(slides, recursive, out, out_dir)
        if batch_mode:
            if diameter_fields is not None and (diameter is not None or diameter_um is not None):
                raise UserError("--diameter-fields estimates the diameter: drop it, or drop --diameter")
        elif diameter_fields is not None:
            raise UserError("--diameter-fields works on several images (--out-dir): drop it for one image")
        if batch_mode:
            if scheduler or resume:
                raise UserError(
                    "--scheduler and --resume work on one slide (-o); a batch re-run skips finished "
                    "images and resumes interrupted ones by itself"
                )
        seg = Segmenter(engine, options)
        seg.names = flag
        console.print(f"model: {seg.describe()}")
        with seg:
            if batch_mode:
                assert out_dir is not None
                asked = [name for name, value in outputs.items() if value is not None]
                rows = batch.run_batch(seg, images, out_dir, asked, _say)
                if summary_json is not None:
                    from cyclepose_deploy.atomic import write_json_atomic

                    write_json_atomic(summary_json, {"model": seg.describe(), "images": rows})
                raise typer.Exit(batch.exit_code(rows))
            assert out is not None
            with _progress() as report:
                result = seg.segment_file(images[0], out, warn=_say, progress=report, **outputs)
        _print_summary(result)
        if summary_json is not None:
            from cyclepose_deploy.atomic import write_json_atomic

            write_json_atomic(summary_json, result.to_dict())


def _say(text: str) -> None:
    from rich.markup import escape

    console.print(escape(text) if text.startswith(("warning:", "image:")) else "note: " + escape(text))


def _pair(text: str | None, option: str, example: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(
            option, f"{{{option}}} must be two numbers LO,HI, e.g. {example}; got {text!r}"
        ) from None
    return low, high


class _progress:
    """A rich progress bar with ETA per task, driven by (task, advance, total) callbacks from any thread."""

    def __enter__(self) -> Any:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.bar.__enter__()
        return self.report

    def report(self, name: str, advance: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total)
        self.bar.advance(self.tasks[name], advance)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)


def _print_summary(result: Any) -> None:
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.times.items())
    console.print(
        f"[bold]{result.objects}[/bold] objects in {result.shape[0]}x{result.shape[1]} px, "
        f"{result.seconds:.1f} s ({result.mpix_per_s:.2f} MPix/s), {result.chunks} chunk(s), "
        f"network tiles {result.tiles_run} for a grid of {result.tiles_grid} "
        f"(+{100 * result.tile_overhead:.0f}% for halos)"
    )
    extra = []
    if result.skipped:
        extra.append(f"{result.skipped} chunk(s) without tissue skipped")
    if result.resumed:
        extra.append(f"{result.resumed} chunk(s) kept from the interrupted run")
    if result.workers:
        extra.append(f"{result.workers} Dask worker(s)")
    if extra:
        console.print("; ".join(extra))
    console.print(_diameter_line(result))
    console.print(f"time per stage (threads overlap): {stages}")
    console.print("wrote " + ", ".join(str(p) for p in result.outputs))


def _diameter_line(result: Any) -> str:
    est = result.diameter
    if est is None:
        return "diameter: no nucleus-like structure found for an estimate; ran at the model's scale"
    how = {
        "given": "given",
        "network": "estimated (network)",
        "blob": "estimated (blob filter)",
        "guess": "estimated (network, at the first image's diameter)",
    }[est.method]
    return f"diameter {est.diameter:.1f} px ({how}); slide rescaled by {result.scale:.3f}"
