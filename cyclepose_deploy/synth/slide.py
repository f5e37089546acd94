"""Synthetic fluorescence nuclei slides with ground-truth instance labels, of any size.

The slide is made in bands of BAND rows, top to bottom, on a rolling canvas: band b+1's nuclei are
placed before band b is rendered, so blur and nuclei crossing the border see their neighbours. Every
random draw comes from a generator keyed by (seed, band), so `make_slide` (in memory) and
`write_slide` (streamed to tiled BigTIFF) give the same pixels for the same arguments.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.synth.appearance import SlideStyle, background, blur, blur_context, camera
from cyclepose_deploy.synth.placement import Canvas, nucleus_margin, place_band
from cyclepose_deploy.synth.shapes import ShapePrior

BAND = 512
TILE = 256
PIXEL_SIZE_UM = 0.65
MAX_SIDE = 1 << 20

BandCallback = Callable[[int, int], None]


def _band_rng(seed: int, band: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, band, stream])


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not 16 <= value <= MAX_SIDE:
            raise UserError(f"slide {name} {value} is out of range: use 16 to {MAX_SIDE} pixels")


def iter_bands(
    height: int, width: int, seed: int, prior: ShapePrior = ShapePrior()
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (image uint16, labels uint32) for slide rows [b*BAND, (b+1)*BAND), top to bottom."""
    check_size(height, width)
    style = SlideStyle.draw(seed)
    margin = max(nucleus_margin(prior), blur_context())
    canvas = Canvas(2 * BAND + 2 * margin, width, row0=-margin)
    n_bands = math.ceil(height / BAND)
    label = place_band(_band_rng(seed, 0, 0), canvas, (0, min(BAND, height)), prior, style, 1)
    for b in range(n_bands):
        if b + 1 < n_bands:
            rows = ((b + 1) * BAND, min((b + 2) * BAND, height))
            label = place_band(_band_rng(seed, b + 1, 0), canvas, rows, prior, style, label)
        yield _render_band(canvas, b * BAND, min((b + 1) * BAND, height), height, seed, b, style)
        canvas.shift(BAND)


def _render_band(
    canvas: Canvas, top: int, bottom: int, height: int, seed: int, band: int, style: SlideStyle
) -> tuple[np.ndarray, np.ndarray]:
    context = blur_context()
    y0, y1 = canvas.local(top), canvas.local(bottom)
    blurred = blur(canvas.fluor[y0 - context : y1 + context], style)[context:-context]
    width = canvas.fluor.shape[1]
    electrons = blurred + background(np.arange(top, bottom), width, height, style)
    image = camera(_band_rng(seed, band, 1), electrons, style)
    return image, canvas.labels[y0:y1].copy()


def make_slide(
    height: int, width: int, seed: int, prior: ShapePrior = ShapePrior()
) -> tuple[np.ndarray, np.ndarray]:
    """A whole slide in memory: (image uint16 (H, W), labels uint32 (H, W), 0 = background)."""
    bands = list(iter_bands(height, width, seed, prior))
    return np.concatenate([b[0] for b in bands]), np.concatenate([b[1] for b in bands])


def write_slide(
    path: str | Path,
    labels_path: str | Path | None,
    height: int,
    width: int,
    seed: int,
    prior: ShapePrior = ShapePrior(),
    pixel_size: float = PIXEL_SIZE_UM,
    on_band: BandCallback | None = None,
) -> int:
    """Stream a slide (and its labels) to tiled, zlib-compressed OME BigTIFF files, band by band,
    in memory bounded by the width. Returns the number of nuclei placed."""
    check_size(height, width)
    n_bands = math.ceil(height / BAND)
    counter = {"labels": 0}

    def bands() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for b, (image, labels) in enumerate(iter_bands(height, width, seed, prior)):
            counter["labels"] = max(counter["labels"], int(labels.max(initial=0)))
            yield image, labels
            if on_band is not None:
                on_band(b + 1, n_bands)

    with atomic_path(path) as image_tmp:
        if labels_path is None:
            _write_tiff(image_tmp, (img for img, _ in bands()), (height, width), np.uint16, pixel_size)
        else:
            with atomic_path(labels_path) as labels_tmp:
                _write_pair(image_tmp, labels_tmp, bands(), (height, width), pixel_size)
    return counter["labels"]


def _tiles(band: np.ndarray) -> Iterator[np.ndarray]:
    for r in range(0, band.shape[0], TILE):
        for c in range(0, band.shape[1], TILE):
            yield band[r : r + TILE, c : c + TILE]


def _write_tiff(
    path: Path, bands: Iterator[np.ndarray], shape: tuple[int, int], dtype: type, pixel_size: float
) -> None:
    import tifffile

    tiles = (tile for band in bands for tile in _tiles(band))
    metadata = {
        "axes": "YX",
        "PhysicalSizeX": pixel_size,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": pixel_size,
        "PhysicalSizeYUnit": "µm",
    }
    resolution = (1e4 / pixel_size, 1e4 / pixel_size)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(
            tiles,
            shape=shape,
            dtype=dtype,
            tile=(TILE, TILE),
            compression="zlib",
            metadata=metadata,
            resolution=resolution,
            resolutionunit="CENTIMETER",
            maxworkers=1,
        )


def _write_pair(
    image_path: Path,
    labels_path: Path,
    bands: Iterator[tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int],
    pixel_size: float,
) -> None:
    """Write image and labels at once: the labels writer runs in a thread fed through a short queue,
    so each band is generated once and only a few bands are held in memory."""
    handoff: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
    failure: list[BaseException] = []
    ended = threading.Event()

    def label_bands() -> Iterator[np.ndarray]:
        while (band := handoff.get()) is not None:
            yield band
        ended.set()

    def write_labels() -> None:
        try:
            _write_tiff(labels_path, label_bands(), shape, np.uint32, pixel_size)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
            while not ended.is_set() and handoff.get() is not None:  # drain: the producer never blocks
                pass

    def image_bands() -> Iterator[np.ndarray]:
        for image, labels in bands:
            handoff.put(labels)
            yield image

    thread = threading.Thread(target=write_labels, name="labels-writer", daemon=True)
    thread.start()
    try:
        _write_tiff(image_path, image_bands(), shape, np.uint16, pixel_size)
    finally:
        handoff.put(None)
        thread.join()
    if failure:
        raise failure[0]
