"""The Python entry point (segment-anything's predictor idea: one typed class over the runtime): load a
model once, then segment arrays or files. The CLI is built on it.

    from cyclepose_deploy import Segmenter
    with Segmenter("export/", tile=256) as seg:          # an export folder, .onnx or TensorRT engine
        result = seg.segment(image)                      # (H, W) array -> SegmentResult
        result.labels                                    # (H, W) uint32, 0 = background
        result = seg.segment_file("slide.ome.tif", "labels.ome.tif", objects="objects.csv")

Options are InferOptions' flat names (tile, diameter, cellprob_threshold, channel, ...), given to the
Segmenter (defaults for every call) or to one call; a misspelt one is an error. No torch is needed.
Arrays are read window by window (numpy, zarr, or dask arrays: a dask array is computed one window at a
time), so memory is bounded by the chunk for the work plus what is returned (labels: 4 bytes per
pixel); for slides larger than memory use `segment_file`, which streams the labels to a tiled OME-TIFF.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import OptionError
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.run.context import Outputs, Progress, RunContext, quiet
from cyclepose_deploy.runtime.run.diameter import DiameterEstimate
from cyclepose_deploy.runtime.run.options import InferOptions
from cyclepose_deploy.runtime.run.result import SegmentResult

OUTPUT_NAMES = ("objects", "preview", "prob", "geojson", "rois", "zarr")


class Segmenter:
    """A loaded model and the options every call starts from.

    model: an export folder (its best verified artifact for this machine), an .onnx file or a TensorRT
    engine; options: an InferOptions, and/or its options by flat name (tile=512, diameter=17, ...).
    Raises UserError for a missing or invalid model, OptionError for a bad or unknown option.
    names: how notes passed to `warn` name settings (the CLI writes its flags)."""

    names: Callable[[str], str] = str

    def __init__(
        self, model: str | Path = "export", options: InferOptions | None = None, **settings: Any
    ) -> None:
        from cyclepose_deploy.runtime.model.artifacts import resolve_model

        self.options = (options or InferOptions()).updated(**settings)
        self.model = resolve_model(model)
        self._runner: Runner | None = None

    # lifecycle: the runner (ONNX Runtime session / TensorRT engine) is created once, on first use
    def runner(self) -> Runner:
        if self._runner is None:
            runner = self.model.runner(threads=self.options.run.threads)
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
        batcher = SharedBatcher(inner, self.options.tiling.batch)
        batcher.activate()
        self._runner = batcher
        try:
            yield batcher
        finally:
            batcher.deactivate()
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
        return_flows: bool = False,
        warn: Callable[[str], None] | None = None,
        **options: Any,
    ) -> SegmentResult:
        """Segment a 2-D image: (H, W) numpy / zarr / dask array of integer or float pixels (NaN/Inf:
        missing) -> SegmentResult with `labels` (H, W) uint32, 0 = background, 1..N nuclei (the same
        numbering as `cyclepose infer` gives for the same pixels), the diameter used and the timings;
        with return_flows, also `flows` (2, H, W) float32 and `prob` (H, W) float32. options: any
        InferOptions by name for this call, e.g. diameter=17, or diameter_um=6.5 with
        pixel_size=(0.325, 0.325) (y, x µm). warn: receives each note (chosen scale, warnings)."""
        from cyclepose_deploy.runtime.run.infer import run
        from cyclepose_deploy.runtime.source.array import ArraySource

        settings = self.options.updated(**options)
        source = ArraySource(image, settings.image.pixel_size)
        ctx = RunContext(settings, self.model, Outputs(None, flows=return_flows), source=source)
        ctx.runner = self.runner()
        return run(self._attach(ctx, warn, None))

    def segment_file(
        self,
        path: str | Path,
        labels: str | Path,
        *,
        warn: Callable[[str], None] | None = None,
        progress: Progress | None = None,
        **options: Any,
    ) -> SegmentResult:
        """Segment an image file of any size (TIFF / OME-TIFF / OME-Zarr / PNG / ...; the options
        channel, series, level, z, t, plane pick the image) into a tiled OME-TIFF pyramid of uint32
        labels at `labels`, plus the outputs named among the options: objects (CSV), preview (PNG),
        prob (probability TIFF), geojson (QuPath), rois (ImageJ .zip), zarr (OME-Zarr folder).
        Outputs that exist are replaced only with overwrite=True; scheduler='local', 'local:N' or a
        Dask address runs the chunks on a cluster (in a script, call it under `if __name__ ==
        "__main__":`), resume=True finishes an interrupted run. progress: (task, advance, total)."""
        from cyclepose_deploy.runtime.run.infer import run

        files = {k: Path(options.pop(k)) for k in OUTPUT_NAMES if options.get(k) is not None}
        for name in OUTPUT_NAMES:
            options.pop(name, None)
        if not isinstance(labels, (str, Path)):
            raise OptionError("labels", "{labels} must be a file path, e.g. labels.ome.tif")
        settings = self.options.updated(**options)
        outputs = Outputs(Path(labels), **files)
        ctx = RunContext(settings, self.model, outputs, path=Path(path))
        ctx.runner = None if settings.run.scheduler else self.runner()  # Dask: the run opens its own
        return run(self._attach(ctx, warn, progress))

    def estimate_diameter(
        self, image: Any, *, warn: Callable[[str], None] | None = None, **options: Any
    ) -> DiameterEstimate | None:
        """The median nucleus diameter (px) a segmentation of `image` (a file path, or a 2-D array as
        for `segment`) would use, without segmenting it: the given diameter, or the automatic estimate
        (runtime.run.scale); None when the image holds no nucleus-like structure. A list of images
        (fields of one acquisition, imaged alike) gives one estimate for all of them, the median of
        theirs (method "acquisition"): pass it on as `diameter=` (batch mode's --diameter-fields)."""
        if isinstance(image, (list, tuple)):
            found = [self.estimate_diameter(one, warn=warn, **options) for one in image]
            values = sorted(e.diameter for e in found if e is not None)
            if not values:
                return None
            import statistics

            return DiameterEstimate(float(statistics.median(values)), "acquisition", None, len(values))
        from cyclepose_deploy.runtime.run.infer import measure_diameter
        from cyclepose_deploy.runtime.source.array import ArraySource

        settings = self.options.updated(**options)
        if isinstance(image, (str, Path)):
            ctx = RunContext(settings, self.model, Outputs(None), path=Path(image))
        else:
            ctx = RunContext(
                settings, self.model, Outputs(None), source=ArraySource(image, settings.image.pixel_size)
            )
        ctx.runner = self.runner()
        return measure_diameter(self._attach(ctx, warn, None))

    def _attach(
        self, ctx: RunContext, warn: Callable[[str], None] | None, progress: Progress | None
    ) -> RunContext:
        ctx.notes = warn or quiet
        ctx.name = self.names
        if progress is not None:
            ctx.progress = progress
        return ctx
