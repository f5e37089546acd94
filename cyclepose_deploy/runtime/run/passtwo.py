"""Pass 2: the seed ids of pass 1 become labels 1..N, block by block, written to the labels file (or kept
in memory for the Python API), feeding the object table and the preview; then the outlines (GeoJSON,
ROIs), the OME-Zarr copy, the preview and the probability map, each to its temporary name."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np

from cyclepose_deploy.atomic import writing
from cyclepose_deploy.runtime.outputs.objects import ObjectTable
from cyclepose_deploy.runtime.outputs.preview import Preview
from cyclepose_deploy.runtime.outputs.tiff import (
    Block,
    BlockObserver,
    PyramidSpool,
    label_blocks,
    pyramid_shapes,
    resampled_blocks,
    write_tiled_tiff,
)
from cyclepose_deploy.runtime.run.context import RunContext
from cyclepose_deploy.runtime.run.readahead import read_ahead

Reader = Callable[[int, int, int, int], np.ndarray]
# uncompressed levels on disk (1.3 bytes per slide px): slides up to about 28,000^2 px; larger ones
# decode the compressed ids once per level instead of filling the disk
SPOOL_MAX_BYTES = 1 << 30


def write(ctx: RunContext) -> tuple[int, np.ndarray | None]:
    """Labels 1..N into the labels file (or an in-memory array when outputs.labels is None), and every
    other output. Returns (N, the in-memory labels or None)."""
    assert ctx.store is not None and ctx.norm is not None
    t = time.perf_counter()
    outputs, source, store = ctx.outputs, ctx.source, ctx.store
    table = store.id_table()
    want_table = outputs.objects or outputs.geojson or outputs.rois
    objects = ObjectTable(len(table), source, source.pixel_size) if want_table else None
    preview = Preview(source.shape, source, ctx.norm) if outputs.preview else None
    observers: list[BlockObserver] = [o.observe for o in (objects, preview) if o is not None]
    rows = source.shape[0]
    observers.append(lambda r0, c0, block: ctx.progress("labels", block.shape[0] if c0 == 0 else 0, rows))
    # the next blocks of labels are decoded and numbered while the observers and the writer take this one
    blocks = contextlib.closing(read_ahead(label_blocks(store.ids, table, source.shape)))
    in_memory = None
    if outputs.labels is None:
        in_memory = np.zeros(source.shape, np.uint32)
        with blocks as numbered:
            for r0, c0, block in numbered:
                for observe in observers:
                    observe(r0, c0, block)
                in_memory[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    else:
        with writing(outputs.labels), _pyramid(ctx, table, observers) as levels, blocks as numbered:
            write_tiled_tiff(
                ctx.temps[outputs.labels],
                numbered,
                source.shape,
                labels_dtype(len(table)),
                source.pixel_size,
                observers,
                levels,
            )
    if objects is not None and outputs.objects is not None:
        objects.save_csv(ctx.temps[outputs.objects])
    if objects is not None and (outputs.geojson or outputs.rois):
        _outlines(ctx, objects, in_memory)
    if outputs.zarr is not None and outputs.labels is not None:
        from cyclepose_deploy.runtime.outputs.omezarr import write_ome_zarr

        with writing(outputs.zarr):
            write_ome_zarr(source, ctx.temps[outputs.labels], ctx.temps[outputs.zarr], source.pixel_size)
    if preview is not None and outputs.preview is not None:
        with _labels_reader(ctx, in_memory) as read:
            preview.save(ctx.temps[outputs.preview], read)
    if store.prob is not None and outputs.prob is not None:
        with writing(outputs.prob):
            prob_blocks = resampled_blocks(store.prob, source.shape)
            write_tiled_tiff(ctx.temps[outputs.prob], prob_blocks, source.shape, "uint8", source.pixel_size)
    ctx.times["write"] = time.perf_counter() - t
    return len(table), in_memory


@contextlib.contextmanager
def _pyramid(
    ctx: RunContext, table: np.ndarray, observers: list[BlockObserver]
) -> Iterator[list[tuple[Iterator[Block], tuple[int, int]]]]:
    """The labels' sub-resolution levels as (blocks, shape), nearest-neighbour (labels are never
    averaged). On the slide's own grid (scale 1) they are picked from the level-0 blocks as those are
    written (tiff.PyramidSpool, an observer added here) while they fit SPOOL_MAX_BYTES; otherwise
    straight from the seed ids."""
    assert ctx.store is not None and ctx.folder is not None
    shapes = pyramid_shapes(ctx.source.shape)
    spooled = sum(h * w for h, w in shapes) * np.dtype(np.uint32).itemsize
    if not shapes or tuple(ctx.store.ids.shape) != tuple(ctx.source.shape) or spooled > SPOOL_MAX_BYTES:
        yield [(label_blocks(ctx.store.ids, table, shape), shape) for shape in shapes]
        return
    spool = PyramidSpool(ctx.folder, ctx.source.shape, shapes)
    observers.append(spool.observe)
    try:
        yield [(spool.blocks(k), shape) for k, shape in enumerate(shapes)]
    finally:
        observers.remove(spool.observe)
        spool.close()


def labels_dtype(count: int) -> str:
    """uint16 while the labels fit (as Cellpose saves masks): ImageJ opens uint32 as 32-bit float and
    rasterio-based readers refuse it; uint32 beyond 65,535 nuclei."""
    return "uint16" if count <= np.iinfo(np.uint16).max else "uint32"


def flows_and_prob(ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """The kept unit flows (2, H, W) float32 and probability (H, W) float32 at the image's resolution
    (nearest pixel of the working grid), for the Python API's return_flows."""
    assert ctx.store is not None and ctx.store.flows is not None and ctx.store.prob is not None
    shape = ctx.source.shape
    flows = np.stack([_whole(plane, shape) for plane in (ctx.store.flows[0], ctx.store.flows[1])])
    prob = _whole(ctx.store.prob, shape).astype(np.float32) / np.float32(255)
    return flows.astype(np.float32), prob


def _whole(array: object, shape: tuple[int, int]) -> np.ndarray:
    out: np.ndarray | None = None
    for r0, c0, block in resampled_blocks(array, shape):
        if out is None:
            out = np.zeros(shape, block.dtype)
        out[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    assert out is not None
    return out


@contextlib.contextmanager
def _labels_reader(ctx: RunContext, in_memory: np.ndarray | None) -> Iterator[Reader]:
    """Windows of the final labels: the in-memory array, or the labels file just written."""
    if in_memory is not None:
        yield lambda y0, y1, x0, x1: in_memory[y0:y1, x0:x1]
        return
    import tifffile
    import zarr

    assert ctx.outputs.labels is not None
    with tifffile.TiffFile(ctx.temps[ctx.outputs.labels]) as tif:
        array = zarr.open(tif.series[0].aszarr(level=0), mode="r")
        yield lambda y0, y1, x0, x1: np.asarray(array[y0:y1, x0:x1])


def _outlines(ctx: RunContext, table: ObjectTable, in_memory: np.ndarray | None) -> None:
    """GeoJSON / ROI outlines from the final labels (runtime.outputs.vectors)."""
    from cyclepose_deploy.runtime.outputs.vectors import write_outlines

    outputs, source = ctx.outputs, ctx.source
    geojson = ctx.temps.get(outputs.geojson) if outputs.geojson else None
    rois = ctx.temps.get(outputs.rois) if outputs.rois else None
    with _labels_reader(ctx, in_memory) as read, writing("the outlines"):
        scale = getattr(source, "level_scale", (1.0, 1.0))
        write_outlines(read, source.shape, table.rows(), geojson, rois, source.pixel_size, scale)
