"""The Python entry point (segment-anything's predictor idea: a small numpy-facing class over the
runtime): load a model once, then segment arrays or files. The CLI is built on it.

    from cyclepose_deploy import Segmenter
    with Segmenter("export/") as seg:                 # an export folder, .onnx or TensorRT engine
        labels = seg.segment(image)                  # (H, W) array -> (H, W) uint32 labels, 0 = background
        summary = seg.segment_file("slide.ome.tif", "labels.ome.tif", objects="objects.csv")

No torch is needed. Arrays are read window by window (numpy, zarr, or dask arrays: a dask array is
computed one window at a time), so memory is bounded by the chunk for the work, plus the returned
labels (4 bytes per pixel); for slides larger than memory use `segment_file`, which streams the labels
to a tiled OME-TIFF.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy import defaults
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.run.chunks import Settings
from cyclepose_deploy.runtime.source.normalize import fill_missing
from cyclepose_deploy.runtime.source.slide import SlideOptions
from cyclepose_deploy.runtime.source.units import check_pixel_size
from cyclepose_deploy.runtime.tiling.grid import TileGrid


@dataclass
class ArrayImage:
    """A 2-D array-like (numpy, zarr, dask) as a runtime source: float32 windows, missing data filled
    like a slide's. pixel_size: (y, x) µm or None."""

    array: Any
    pixel_size: tuple[float, float] | None = None
    description: str = "array"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in getattr(self.array, "shape", ()))
        dtype = np.dtype(getattr(self.array, "dtype", np.float32))
        if len(shape) != 2:
            raise UserError(f"segment() takes a 2-D (H, W) image, got shape {shape}: pick one plane/channel")
        if dtype.kind not in "uif":
            raise UserError(f"segment() takes integer or float pixels, got {dtype}: convert the image")
        if min(shape) < 1:
            raise UserError(f"segment() got an empty image of shape {shape}")
        self.shape = (shape[0], shape[1])
        if self.pixel_size is not None:
            self.pixel_size = check_pixel_size(self.pixel_size)
        self.file_pixel_size = self.pixel_size
        self.level_scale = (1.0, 1.0)
        self.float_pixels = dtype.kind == "f"
        self.description = f"{self.description} ({shape[0]}x{shape[1]} px, {dtype})"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        window = np.asarray(self.array[y0:y1, x0:x1], dtype=np.float32)
        return fill_missing(window) if self.float_pixels else window

    def close(self) -> None:
        """Nothing to release (the caller owns the array)."""


class Segmenter:
    """A loaded model and the tiling / dynamics settings, reused for every image.

    model: an export folder (the best verified artifact for this machine), an .onnx file or a TensorRT
    engine; threads: ONNX Runtime CPU threads (None: all cores); tile, overlap (px), batch (tiles per
    network call), chunk (px, bounds the memory), cellprob_threshold (logit), flow_threshold: as
    `cyclepose infer`. Raises UserError for a missing or invalid model or setting."""

    def __init__(
        self,
        model: str | Path = "export",
        *,
        threads: int | None = None,
        tile: int = defaults.TILE,
        overlap: int = defaults.OVERLAP,
        batch: int = defaults.BATCH,
        chunk: int = defaults.CHUNK,
        cellprob_threshold: float = defaults.CELLPROB_THRESHOLD,
        flow_threshold: float = defaults.FLOW_THRESHOLD,
    ) -> None:
        from cyclepose_deploy.runtime.model.artifacts import resolve_model

        TileGrid((1, 1), tile, overlap)  # validates tile and overlap
        if batch < 1 or chunk < tile:
            raise UserError(f"batch {batch} must be >= 1 and chunk {chunk} at least the tile {tile}")
        self.model = resolve_model(model)
        self.settings = Settings(
            tile=tile,
            overlap=overlap,
            batch=batch,
            chunk=chunk,
            cellprob_threshold=cellprob_threshold,
            flow_threshold=flow_threshold,
        )
        self.threads = threads
        self._runner: Any = None

    # lifecycle: the runner (ONNX Runtime session / TensorRT engine) is created once, on first use
    def runner(self) -> Any:
        if self._runner is None:
            runner = self.model.runner(threads=self.threads)
            runner.activate()
            self._runner = runner
        return self._runner

    @contextlib.contextmanager
    def shared_batches(self) -> Iterator[Any]:
        """Within this block, images segmented from several threads share network batches (their
        tiles are concatenated into calls of up to `batch` tiles: runtime.backends.batching); yields
        the SharedBatcher (its `calls` and `tiles` give the mean batch)."""
        from cyclepose_deploy.runtime.backends.batching import SharedBatcher

        inner = self.runner()
        batcher = SharedBatcher(inner, self.settings.batch)
        self._runner = batcher
        try:
            yield batcher
        finally:
            batcher.close()
            self._runner = inner

    def close(self) -> None:
        """Release the session / engine."""
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.model.describe()

    # work ---------------------------------------------------------------------------------------------
    def segment(
        self,
        image: Any,
        *,
        diameter: float | None = None,
        diameter_um: float | None = None,
        pixel_size: tuple[float, float] | None = None,
        norm_percentiles: tuple[float, float] | None = None,
        norm_range: tuple[float, float] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> np.ndarray:
        """Instance labels of a 2-D image: (H, W) numpy / zarr / dask array of uint8, uint16 or float
        pixels (NaN/Inf: missing) -> (H, W) uint32, 0 = background, 1..N nuclei (the same numbering as
        `cyclepose infer` gives for the same pixels). diameter: median nucleus diameter in px (None:
        estimated, see runtime.diameter); diameter_um with pixel_size (y, x) µm instead."""
        return self.segment_array(
            image,
            diameter=diameter,
            diameter_um=diameter_um,
            pixel_size=pixel_size,
            norm_percentiles=norm_percentiles,
            norm_range=norm_range,
            warn=warn,
        ).labels  # type: ignore[return-value]

    def segment_array(self, image: Any, **kwargs: Any) -> Any:
        """As `segment`, returning the run's Summary (labels in `.labels`, the diameter used, times)."""
        from cyclepose_deploy.runtime.run.pipeline import Outputs, check_settings, diameter_px, run_source

        say = kwargs.get("warn") or (lambda text: None)
        model, fixed = check_settings(
            self.model,
            self.settings,
            kwargs.get("diameter"),
            kwargs.get("diameter_um"),
            kwargs.get("norm_percentiles"),
            kwargs.get("norm_range"),
            say,
        )
        source = ArrayImage(image, kwargs.get("pixel_size"))
        missing = "diameter_um needs pixel_size=(y, x) in µm, or give diameter in px"
        diameter = diameter_px(
            kwargs.get("diameter"), kwargs.get("diameter_um"), source.pixel_size, model, missing
        )
        return run_source(
            source,
            model,
            Outputs(None),
            self.settings,
            diameter,
            lambda *a: None,
            time.perf_counter(),
            fixed,
            self.runner(),
        )

    def segment_file(
        self,
        path: str | Path,
        labels: str | Path,
        *,
        objects: str | Path | None = None,
        preview: str | Path | None = None,
        prob: str | Path | None = None,
        geojson: str | Path | None = None,
        rois: str | Path | None = None,
        zarr: str | Path | None = None,
        options: SlideOptions | None = None,
        diameter: float | None = None,
        diameter_um: float | None = None,
        norm_percentiles: tuple[float, float] | None = None,
        norm_range: tuple[float, float] | None = None,
        overwrite: bool = False,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        scheduler: str | None = None,
        resume: bool = False,
        skip_empty: bool = True,
    ) -> Any:
        """Segment an image file of any size (TIFF / OME-TIFF / OME-Zarr / PNG / ...; `options` picks
        the series, level, plane and channel) into a tiled OME-TIFF pyramid of uint32 labels and the
        optional object table (CSV), preview (PNG), probability map, QuPath GeoJSON outlines,
        ImageJ ROI set (.zip) and OME-Zarr labels (a folder); returns the run's Summary. Outputs
        that exist are replaced only with overwrite=True. scheduler: 'local', 'local:N' or a Dask
        scheduler address runs the chunks on a dask.distributed cluster (runtime.distributed);
        resume: finish an interrupted run from LABELS.run (runtime.runfolder); skip_empty: chunks
        without tissue skip the network (runtime.tissue)."""
        from cyclepose_deploy.runtime.run.passone import RunOptions
        from cyclepose_deploy.runtime.run.pipeline import Outputs, run_infer

        outputs = Outputs(
            Path(labels),
            Path(objects) if objects else None,
            Path(preview) if preview else None,
            Path(prob) if prob else None,
            Path(geojson) if geojson else None,
            Path(rois) if rois else None,
            Path(zarr) if zarr else None,
        )
        if rois:
            from cyclepose_deploy.runtime.outputs.vectors import check_rois_available

            check_rois_available()
        return run_infer(
            path,
            self.model,
            outputs,
            self.settings,
            None,
            diameter,
            progress,
            norm_percentiles,
            norm_range,
            options=options,
            diameter_um=diameter_um,
            overwrite=overwrite,
            warn=warn,
            runner=None if scheduler else self.runner(),
            run=RunOptions(scheduler, resume, skip_empty, self.threads),
        )
