"""Lazy slide reading through tifffile's zarr store: random access to any TIFF without loading it whole."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cyclepose_deploy import limits
from cyclepose_deploy.errors import OptionError, UserError, literal
from cyclepose_deploy.runtime.source.normalize import Normalization, check_float32_range, fill_missing
from cyclepose_deploy.runtime.source.resample import bilinear
from cyclepose_deploy.runtime.source.units import check_pixel_size

CHANNEL_AXES = ("C", "S")
PLANE_AXES = {"Z": "z", "T": "t"}  # any other stacked axis (I, Q, ...: pages) is picked by `plane`
WHOLE_READ_PIXELS = 4096 * 4096  # slides up to this size are read whole (in windows) for the statistics
SAMPLE_PATCHES = 24  # larger ones: a 24 x 24 grid of 96 px patches (5.3 M pixels)
SAMPLE_PATCH = 96
STRIP_CACHE_BYTES = 512 << 20  # decoded strips of a compressed untiled TIFF kept for reuse
# A channel whose intensity spread (99.9th - 0.1th percentile) is below this fraction of the
# strongest channel's is "nearly empty": the user is warned and told which channel holds signal.
EMPTY_CHANNEL_FRACTION = 0.1
CHANNEL_PROBE = 512  # px: the central window each channel is probed on


@dataclass(frozen=True)
class SlideOptions:
    """Which image of a file to segment: `channel` (C or interleaved S axis), `series`, pyramid
    `level`, a plane of a Z stack (`z`), time series (`t`) or other page stack (`plane`), and a
    `pixel_size` (y, x) µm that overrides the file's. None everywhere: the full-resolution 2D image."""

    channel: int | None = None
    series: int | None = None
    level: int | None = None
    z: int | None = None
    t: int | None = None
    plane: int | None = None
    pixel_size: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("channel", "series", "level", "z", "t", "plane"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, limits.INFER["index"].check(name, value))
        if self.pixel_size is not None:
            object.__setattr__(self, "pixel_size", check_pixel_size(self.pixel_size))


class Source(Protocol):
    """What the tiler reads from: a 2D float image, `read` only inside its bounds."""

    shape: tuple[int, int]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class Slide:
    """One 2D plane (one channel) of a TIFF / OME-TIFF / OME-Zarr / zarr / PNG / JPEG / BMP image, read
    lazily as float32 windows (runtime.formats opens the file and picks the series and level).

    Attributes: shape (H, W) px; pixel_size (y, x) µm or None; description (what was chosen);
    notes (what the user should know: the series chosen, an empty channel, a slow file layout)."""

    def __init__(
        self, path: str | Path, channel: int | None = None, options: SlideOptions | None = None
    ) -> None:
        from cyclepose_deploy.runtime.source.formats import open_image

        opts = options or SlideOptions()
        if channel is not None:
            opts = replace(opts, channel=channel)
        self.path = Path(path)
        found = open_image(self.path, opts.series, opts.level)
        self._found = found
        try:
            self._setup(found, opts)
        except BaseException:
            found.close()
            raise

    def _setup(self, found: Any, opts: SlideOptions) -> None:
        self.axes, self._array = found.axes, found.array
        self.dtype = np.dtype(self._array.dtype)
        if self.dtype.kind not in "uif":
            raise UserError(
                f"{self.path} has pixel type {self.dtype}: convert it to uint8, uint16 or float32"
            )
        self._index, self.channels, self.channel = _select(self.axes, self._array.shape, opts, self.path)
        self.shape = (
            int(self._array.shape[self.axes.index("Y")]),
            int(self._array.shape[self.axes.index("X")]),
        )
        if self.shape[0] < 1 or self.shape[1] < 1:
            raise UserError(
                f"{self.path} is an empty image ({self.shape[0]}x{self.shape[1]} px): "
                "give an image with pixels"
            )
        self.file_pixel_size = found.pixel_size
        given = check_pixel_size(opts.pixel_size) if opts.pixel_size is not None else None
        self.pixel_size = given or found.pixel_size
        self.description = found.description
        self.level_scale = found.level_scale
        self.notes = list(found.notes)
        self._strips = None
        if found.strip_rows is not None:
            self._strips = StripCache(self._band, found.strip_rows, self.shape, self.dtype.itemsize)
            self.notes.append(self._strips.advice(self.path))
        if self.channels > 1:
            self.notes.extend(_channel_notes(self, opts.channel))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The raw window [y0:y1, x0:x1] as float32; it must lie inside the slide."""
        try:
            if self._strips is not None:
                data = self._strips.read(y0, y1, x0, x1)
            else:
                data = self._window(y0, y1, x0, x1, self._index)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"cannot decode {self.path} at y={y0}, x={x0} ({exc}): the file may be corrupt"
            ) from None
        if self.dtype.kind == "f" and self.dtype.itemsize > 4:
            check_float32_range(np.asarray(data), f"{literal(self.path)} (at y={y0}, x={x0})")
        data = np.asarray(data, dtype=np.float32)
        return fill_missing(data) if self.dtype.kind == "f" else data

    def _window(self, y0: int, y1: int, x0: int, x1: int, base: list[Any]) -> np.ndarray:
        index = list(base)
        index[self.axes.index("Y")] = slice(y0, y1)
        index[self.axes.index("X")] = slice(x0, x1)
        return np.asarray(self._array[tuple(index)])

    def _band(self, y0: int, y1: int) -> np.ndarray:
        return self._window(y0, y1, 0, self.shape[1], self._index)

    def read_channel(self, channel: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """A window of another channel (same planes), for the empty-channel check."""
        index = list(self._index)
        for i, axis in enumerate(self.axes):
            if axis in CHANNEL_AXES and self._array.shape[i] > 1:
                index[i] = channel
        try:
            return np.asarray(self._window(y0, y1, x0, x1, index), dtype=np.float32)
        except Exception as exc:
            raise UserError(
                f"cannot decode {self.path} channel {channel} at y={y0}, x={x0} ({exc}): "
                "the file may be corrupt"
            ) from None

    def close(self) -> None:
        self._found.close()


class StripCache:
    """Decoded row bands of a compressed, untiled TIFF (one strip is decoded whole for any window in
    it), kept least-recently-used up to STRIP_CACHE_BYTES so each strip is decoded about once."""

    def __init__(self, band: Any, rows: int, shape: tuple[int, int], itemsize: int) -> None:
        self.band, self.rows, self.shape = band, rows, shape
        self.strip_bytes = rows * shape[1] * itemsize
        self.capacity = STRIP_CACHE_BYTES // max(self.strip_bytes, 1)
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.decoded = 0

    def advice(self, path: Path) -> str:
        mb = self.strip_bytes / 2**20
        if self.capacity >= 1:
            return (
                f"{path.name} is stored as compressed strips of {mb:.0f} MB (not tiled); each strip is "
                "decoded once and cached; re-save it tiled (e.g. tifffile tile=(512, 512)) to read it faster"
            )
        return (
            f"{path.name} is stored as compressed strips of {mb:.0f} MB (not tiled), too big to cache: "
            "every window decodes a whole strip and this will be slow; re-save it tiled "
            "(e.g. tifffile tile=(512, 512), or bfconvert -tilex 512 -tiley 512)"
        )

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.capacity < 1:
            return self.band(y0, y1)[:, x0:x1]
        parts = []
        for k in range(y0 // self.rows, (y1 - 1) // self.rows + 1):
            band = self._strip(k)
            top = k * self.rows
            parts.append(band[max(y0 - top, 0) : min(y1 - top, band.shape[0]), x0:x1])
        return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    def _strip(self, k: int) -> np.ndarray:
        if k in self.cache:
            self.cache.move_to_end(k)
            return self.cache[k]
        band = self.band(k * self.rows, min((k + 1) * self.rows, self.shape[0]))
        self.decoded += 1
        self.cache[k] = band
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return band


def _select(axes: str, shape: tuple[int, ...], opts: SlideOptions, path: Path) -> tuple[list[Any], int, int]:
    """The index that picks one channel and one plane and drops singleton axes; refuse what cannot
    be reduced to one 2D plane, naming the option that picks it."""
    if "Y" not in axes or "X" not in axes:
        raise UserError(f"{path} has axes {axes!r} without Y and X: give a 2D image")
    index: list[Any] = []
    channels, chosen = 1, 0
    stacks = [
        a for a, n in zip(axes, shape, strict=True) if a not in "YX" and a not in CHANNEL_AXES and n > 1
    ]
    others = [a for a in stacks if a not in PLANE_AXES]
    if opts.plane is not None and len(stacks) > 1 and others == []:
        raise OptionError(
            "plane",
            f"{literal(path)} has several stacked axes ({''.join(stacks)}): pick each with {{z}} / {{t}}, "
            "not {plane}",
        )
    for axis, size in zip(axes, shape, strict=True):
        if axis in "YX":
            index.append(slice(None))
        elif axis in CHANNEL_AXES and size > 1:
            if axis == "S" and axes.index("S") < axes.index("Y") and opts.channel is None:
                # planar samples: what numpy's (N, H, W) becomes in a TIFF; a stack as often as channels
                raise OptionError(
                    "channel",
                    f"{literal(path)} holds {size} planes stored as the samples of one page (axes {axes!r}): "
                    f"a stack or the channels of one image; pick the one to segment with {{channel}} N "
                    f"(0..{size - 1})",
                )
            if channels > 1:
                raise UserError(f"{path} has several channel axes ({axes!r}): save one channel axis")
            channels, chosen = size, _check_channel(opts.channel, size, path)
            index.append(chosen)
        elif axis in CHANNEL_AXES:
            index.append(0)
        else:
            index.append(_plane(axis, size, opts, path, axes, len(stacks) == 1))
    if channels == 1 and opts.channel not in (None, 0):
        raise OptionError(
            "channel", f"{{channel}} {opts.channel} is out of range: {literal(path)} has 1 channel (use 0)"
        )
    for axis, option in PLANE_AXES.items():
        value = getattr(opts, axis.lower())
        if value not in (None, 0) and axis not in stacks:
            raise OptionError(
                option,
                f"{{{option}}} {value} is out of range: {literal(path)} has no {axis} stack (axes {axes!r})",
            )
    if opts.plane not in (None, 0) and not stacks:
        raise OptionError(
            "plane", f"{{plane}} {opts.plane} is out of range: {literal(path)} is a single plane"
        )
    return index, channels, chosen


def _plane(axis: str, size: int, opts: SlideOptions, path: Path, axes: str, only_stack: bool) -> int:
    """The index along a non-channel axis: 0 for a singleton, else what z / t / plane say."""
    option = PLANE_AXES.get(axis, "plane")
    value = getattr(opts, axis.lower()) if axis in PLANE_AXES else None
    if value is None and size > 1 and (axis not in PLANE_AXES or only_stack):
        value = opts.plane  # `plane` picks along the one stacked axis, never a singleton
    if size == 1:
        return 0 if value in (None, 0) else _out_of_range(option, value, axis, size, path)
    if value is None:
        kind = {"Z": "Z planes", "T": "time points"}.get(axis, f"planes along axis {axis}")
        raise OptionError(
            option,
            f"{literal(path)} has {size} {kind} (axes {axes!r}): pick one 2D plane with {{{option}}} N "
            f"(0..{size - 1}); to segment every plane, run once per plane",
        )
    if not 0 <= value < size:
        _out_of_range(option, value, axis, size, path)
    return int(value)


def _out_of_range(option: str, value: int, axis: str, size: int, path: Path) -> int:
    raise OptionError(
        option,
        f"{{{option}}} {value} is out of range: {literal(path)} has {size} along axis {axis} (0..{size - 1})",
    )


def _check_channel(channel: int | None, size: int, path: Path) -> int:
    chosen = 0 if channel is None else channel
    if not 0 <= chosen < size:
        raise OptionError(
            "channel",
            f"{{channel}} {channel} is out of range: {literal(path)} has {size} channels (0..{size - 1})",
        )
    return chosen


def _channel_notes(slide: Slide, asked: int | None) -> list[str]:
    """A warning when the chosen channel is (nearly) empty, naming the channel that holds signal,
    probed on a central window of each channel."""
    h, w = slide.shape
    y0, x0 = max(0, (h - CHANNEL_PROBE) // 2), max(0, (w - CHANNEL_PROBE) // 2)
    y1, x1 = min(h, y0 + CHANNEL_PROBE), min(w, x0 + CHANNEL_PROBE)
    spreads = []
    for c in range(slide.channels):
        window = slide.read_channel(c, y0, y1, x0, x1)
        window = window[np.isfinite(window)]
        low, high = np.percentile(window, [0.1, 99.9]) if window.size else (0.0, 0.0)
        spreads.append(float(high - low))
    best = int(np.argmax(spreads))
    if best == slide.channel or spreads[slide.channel] >= EMPTY_CHANNEL_FRACTION * spreads[best]:
        return []
    which = "channel 0 (the default)" if asked is None else f"channel {slide.channel}"
    return [
        f"warning: {which} of {literal(slide.path.name)} is nearly empty (intensity spread "
        f"{spreads[slide.channel]:.3g} vs {spreads[best]:.3g}); channel {best} holds the signal: "
        f"pass {{channel={best}}}"
    ]


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
        return bilinear(self.base.read(sy0, sy1, sx0, sx1), ys - sy0, xs - sx0)


def at_scale(source: Source, scale: float) -> Source:
    """The source seen at `scale` (a ScaledSource), or the source itself when the scale is 1 (+-0.1 %)."""
    return source if abs(scale - 1.0) < 1e-3 else ScaledSource(source, scale)


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
