"""Lazy slide reading through tifffile's zarr store: random access to any TIFF without loading it whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.normalize import Normalization

CHANNEL_AXES = ("C", "S")
WHOLE_READ_PIXELS = 4096 * 4096  # slides up to this size are read whole (in windows) for the statistics
SAMPLE_PATCHES = 24  # larger ones: a 24 x 24 grid of 96 px patches (5.3 M pixels)
SAMPLE_PATCH = 96
OME_UNITS_IN_UM = {  # OME UnitsLength -> micrometres (µ as micro sign U+00B5 or Greek mu U+03BC)
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


class Source(Protocol):
    """What the tiler reads from: a 2D float image, `read` only inside its bounds."""

    shape: tuple[int, int]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class Slide:
    """Level 0 of a TIFF/BigTIFF/OME-TIFF, one channel, read lazily as float32 windows."""

    def __init__(self, path: str | Path, channel: int | None = None) -> None:
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"slide {self.path} not found: check the path")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self.axes, self.dtype = series.axes, np.dtype(series.dtype)
            self._array = _open_zarr(series)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"cannot read {self.path} as a TIFF ({exc}): check that the file is complete"
            ) from None
        self._index, self.channels, self.channel = _select(self.axes, self._array.shape, channel, self.path)
        self.shape = (
            int(self._array.shape[self.axes.index("Y")]),
            int(self._array.shape[self.axes.index("X")]),
        )
        if self.dtype.kind not in "uif":
            raise UserError(
                f"{self.path} has pixel type {self.dtype}: convert it to uint8, uint16 or float32"
            )
        self.pixel_size = _pixel_size(self._tif)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The raw window [y0:y1, x0:x1] as float32; it must lie inside the slide."""
        index = list(self._index)
        index[self.axes.index("Y")] = slice(y0, y1)
        index[self.axes.index("X")] = slice(x0, x1)
        try:
            data = self._array[tuple(index)]
        except Exception as exc:
            raise UserError(
                f"cannot decode {self.path} at y={y0}, x={x0} ({exc}): the file may be corrupt"
            ) from None
        return np.asarray(data, dtype=np.float32)

    def close(self) -> None:
        self._tif.close()


def _open_zarr(series: Any) -> Any:
    import zarr

    return zarr.open(series.aszarr(level=0), mode="r")


def _select(axes: str, shape: tuple[int, ...], channel: int | None, path: Path) -> tuple[list[Any], int, int]:
    """The index that picks one channel and drops singleton axes; refuse what is not a 2D image."""
    if "Y" not in axes or "X" not in axes:
        raise UserError(f"{path} has axes {axes!r} without Y and X: give a 2D image")
    index: list[Any] = []
    channels, chosen = 1, 0
    for axis, size in zip(axes, shape, strict=True):
        if axis in "YX":
            index.append(slice(None))
        elif axis in CHANNEL_AXES and size > 1:
            if channels > 1:
                raise UserError(f"{path} has several channel axes ({axes!r}): save one channel axis")
            channels, chosen = size, _check_channel(channel, size, path)
            index.append(chosen)
        elif size == 1:
            index.append(0)
        else:
            raise UserError(
                f"{path} has axis {axis!r} of size {size} (axes {axes!r}): give a single 2D plane"
            )
    if channels == 1 and channel not in (None, 0):
        raise UserError(f"--channel {channel} is out of range: {path} has 1 channel (use 0)")
    return index, channels, chosen


def _check_channel(channel: int | None, size: int, path: Path) -> int:
    chosen = 0 if channel is None else channel
    if not 0 <= chosen < size:
        raise UserError(f"--channel {channel} is out of range: {path} has {size} channels (0..{size - 1})")
    return chosen


def _pixel_size(tif: Any) -> tuple[float, float] | None:
    """Physical pixel size (y, x) in micrometres from OME metadata or the resolution tags, if present."""
    ome = _ome_pixel_size(tif.ome_metadata) if tif.ome_metadata else None
    if ome is not None:
        return ome
    page = tif.pages[0]
    tags = page.tags
    unit = {2: 25400.0, 3: 10000.0}.get(int(getattr(tags.get("ResolutionUnit"), "value", 1)))
    if unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    ry, rx = (_ratio(tags[f"{a}Resolution"].value) for a in "YX")
    return (unit / ry, unit / rx) if ry > 0 and rx > 0 else None


def _ome_pixel_size(xml: str) -> tuple[float, float] | None:
    """(y, x) in micrometres from the first image's OME Pixels element (parsed by tifffile), honouring
    PhysicalSize{X,Y}Unit (OME's default is um); None when absent, unparsable or in a unit we cannot
    convert (e.g. 'pixel')."""
    import tifffile

    try:
        image = tifffile.xml2dict(xml).get("OME", {}).get("Image")
    except Exception:  # malformed XML: fall back to the resolution tags
        return None
    if isinstance(image, list):
        image = image[0] if image else None
    pixels = image.get("Pixels") if isinstance(image, dict) else None
    if not isinstance(pixels, dict):
        return None
    sizes = []
    for axis in "YX":
        value = pixels.get(f"PhysicalSize{axis}")
        factor = OME_UNITS_IN_UM.get(str(pixels.get(f"PhysicalSize{axis}Unit", "µm")))
        if not isinstance(value, (int, float)) or factor is None or not value > 0:
            return None
        sizes.append(float(value) * factor)
    return sizes[0], sizes[1]


def _ratio(value: Any) -> float:
    return value[0] / value[1] if isinstance(value, tuple) and value[1] else float(value)


class ScaledSource:
    """A source resampled by `scale` (linear), so nuclei of diameter D look like the model's diameter."""

    def __init__(self, base: Source, scale: float) -> None:
        self.base, self.scale = base, scale
        self.shape = (max(1, round(base.shape[0] * scale)), max(1, round(base.shape[1] * scale)))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ys = (np.arange(y0, y1) + 0.5) / self.scale - 0.5
        xs = (np.arange(x0, x1) + 0.5) / self.scale - 0.5
        sy0, sy1 = _source_span(ys, self.base.shape[0])
        sx0, sx1 = _source_span(xs, self.base.shape[1])
        raw = self.base.read(sy0, sy1, sx0, sx1)
        coords = np.meshgrid(ys - sy0, xs - sx0, indexing="ij")
        return ndimage.map_coordinates(raw, coords, order=1, mode="nearest").astype(np.float32)


def _source_span(coords: np.ndarray, size: int) -> tuple[int, int]:
    return max(0, int(np.floor(coords[0]))), min(size, int(np.floor(coords[-1])) + 2)


def sample_normalization(source: Source, lower: float = 1.0, upper: float = 99.0) -> Normalization:
    """Normalisation statistics of the whole slide (see runtime.normalize): read whole, in windows,
    up to WHOLE_READ_PIXELS; above that from a grid of SAMPLE_PATCHES^2 patches of SAMPLE_PATCH px."""
    h, w = source.shape
    if h * w <= WHOLE_READ_PIXELS:
        step = 2048
        patches = [
            source.read(y, min(y + step, h), x, min(x + step, w))
            for y in range(0, h, step)
            for x in range(0, w, step)
        ]
        return Normalization.from_sample(patches, lower, upper)
    patches = []
    for y in np.linspace(0, max(h - SAMPLE_PATCH, 0), SAMPLE_PATCHES).astype(int):
        for x in np.linspace(0, max(w - SAMPLE_PATCH, 0), SAMPLE_PATCHES).astype(int):
            patches.append(source.read(y, min(y + SAMPLE_PATCH, h), x, min(x + SAMPLE_PATCH, w)))
    return Normalization.from_sample(patches, lower, upper)
