"""Open the image a user points at, whatever holds it, as one lazily indexed array with named axes.

- TIFF / BigTIFF / OME-TIFF / ImageJ TIFF (tifffile): every series and pyramid level; the default is
  the full-resolution image (the series with the most pixels at level 0), never a thumbnail or
  overview that happens to come first.
- OME-Zarr (NGFF 0.4 / 0.5 multiscales) and plain zarr arrays (zarr): lazy, chunk by chunk.
- PNG, JPEG, BMP (imagecodecs): decoded whole (these formats cannot be read by window, and are small).

Axes use tifffile's letters (Y, X, C channel, S interleaved sample, Z, T, I/Q other planes). The
pixel size is read from the metadata of the image actually chosen (see runtime.units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.errors import OptionError, UserError, literal
from cyclepose_deploy.runtime.source import units

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
FLAT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
NGFF_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
# A strip of a compressed, untiled TIFF is decoded whole for any window inside it; strips at least
# this big are kept decoded in a small cache (runtime.slide.StripCache) rather than decoded per read.
LARGE_STRIP_BYTES = 4 << 20
# eval, training and int8 calibration read whole images; a header may claim any size, so check first
MAX_WHOLE_BYTES = 4 << 30


@dataclass
class Found:
    """The chosen image: an array-like (numpy or zarr) with tifffile axis letters, its pixel size
    (y, x) µm or None, a description of the choice, and notes for the user."""

    array: Any
    axes: str
    pixel_size: tuple[float, float] | None
    description: str
    notes: list[str] = field(default_factory=list)
    strip_rows: int | None = None  # rows per compressed strip when reads should go through a cache
    closer: Any = None
    level_scale: tuple[float, float] = (1.0, 1.0)  # full-resolution px per px of the chosen level (y, x)

    def close(self) -> None:
        if self.closer is not None:
            self.closer.close()


def check_input_path(path: Path, what: str = "slide") -> None:
    """Name what `path` is when it is not an image file or folder: missing, a symbolic link that loops
    or points nowhere, a FIFO, a socket or a device (reading one of those would block or stream
    forever). UserError; returns for a regular file or a folder."""
    import errno
    import stat

    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(
                f"{what} {path} is a symbolic link that loops: point it at an image file"
            ) from None
        if path.is_symlink():
            raise UserError(
                f"{what} {path} is a symbolic link to nothing: fix the link or the path"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"cannot read {what} {path}: permission denied; check its permissions") from None
        raise UserError(f"{what} {path} not found: check the path") from None
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    for test, kind in kinds.items():
        if test(mode):
            raise UserError(f"{what} {path} is {kind}, not an image file: give a TIFF, OME-Zarr or PNG file")


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line (codecs list every format they tried, over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0][:limit] if lines else type(exc).__name__).rstrip(":")


def open_image(path: Path, series: int | None = None, level: int | None = None) -> Found:
    """The image at `path`: series `series` (default: the full-resolution one) at pyramid level
    `level` (default 0). Raises UserError naming the problem and the fix."""
    check_input_path(path)
    if path.is_dir() or path.suffix.lower() == ".zarr":
        if not path.exists():
            raise UserError(f"slide {path} not found: check the path")
        if series not in (None, 0):
            raise OptionError(
                "series",
                f"{{series}} {series}: {literal(path)} is a zarr store with one image; drop {{series}}",
            )
        return _open_zarr(path, level)
    if not path.is_file():
        raise UserError(f"slide {path} not found: check the path")
    if path.suffix.lower() in FLAT_SUFFIXES:
        if series not in (None, 0) or level not in (None, 0):
            raise OptionError(
                "series", f"{literal(path)} holds a single image: drop {{series}} and {{level}}"
            )
        return _open_flat(path)
    return _open_tiff(path, series, level)


# TIFF ------------------------------------------------------------------------------------------
def _open_tiff(path: Path, series: int | None, level: int | None) -> Found:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        hint = "check that the file is complete"
        if path.suffix.lower() not in TIFF_SUFFIXES:
            hint = "give a TIFF, OME-Zarr, PNG, JPEG or BMP image"
        raise UserError(f"cannot read {path} as a TIFF ({one_line(exc)}): {hint}") from None
    try:
        return _choose_tiff(tif, path, series, level)
    except UserError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise UserError(f"cannot read {path} as a TIFF ({exc}): check that the file is complete") from None


def _choose_tiff(tif: Any, path: Path, series: int | None, level: int | None) -> Found:
    import zarr

    all_series = list(tif.series)
    if not all_series:
        raise UserError(f"cannot read {path}: it holds no image data; check that the file is complete")
    sizes = [_plane_pixels(s) for s in all_series]
    if series is None:
        index = int(np.argmax(sizes))
    elif 0 <= series < len(all_series):
        index = series
    else:
        raise OptionError(
            "series",
            f"{{series}} {series} is out of range: {literal(path)} has {len(all_series)} series "
            f"(0..{len(all_series) - 1})",
        )
    chosen = all_series[index]
    levels = chosen.levels
    lev = 0 if level is None else level
    if not 0 <= lev < len(levels):
        raise OptionError(
            "level",
            f"{{level}} {level} is out of range: series {index} of {literal(path)} has {len(levels)} "
            f"level(s) (0..{len(levels) - 1})",
        )
    data = levels[lev]
    array = zarr.open(chosen.aszarr(level=lev), mode="r")
    pixel_size = _tiff_pixel_size(tif, chosen, index)
    if pixel_size is not None and lev > 0:  # a pyramid level's pixels are bigger by the downsampling
        pixel_size = _scaled(pixel_size, _yx(chosen.axes, chosen.shape), _yx(data.axes, data.shape))
    description = _describe(all_series, index, lev, len(levels), data)
    notes = []
    if len(all_series) > 1 and series is None:
        others = ", ".join(f"{i}: {_yx_text(s)}" for i, s in enumerate(all_series) if i != index)
        notes.append(
            f"{literal(path.name)} has {len(all_series)} series; segmenting series {index} (the largest; "
            f"others {others}); pick another with {{series}}"
        )
    (fy, fx), (ly, lx) = _yx(chosen.axes, chosen.shape), _yx(data.axes, data.shape)
    return Found(array, data.axes, pixel_size, description, notes, _strip_rows(data), tif, (fy / ly, fx / lx))


def _plane_pixels(series: Any) -> int:
    try:
        y, x = _yx(series.axes, series.shape)
    except ValueError:
        return 0
    return y * x


def _yx(axes: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise ValueError("no Y and X axes")
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _yx_text(series: Any) -> str:
    try:
        y, x = _yx(series.axes, series.shape)
        return f"{y}x{x}"
    except ValueError:
        return f"axes {series.axes}"


def _describe(all_series: list, index: int, level: int, levels: int, data: Any) -> str:
    y, x = _yx(data.axes, data.shape)
    text = f"series {index} of {len(all_series)}"
    if levels > 1:
        text += f", level {level} of {levels}"
    return f"{text} ({y}x{x} px, axes {data.axes})"


def _tiff_pixel_size(tif: Any, series: Any, index: int) -> tuple[float, float] | None:
    """From the chosen series' own metadata: its OME Image, else ImageJ, else its first page's tags."""
    if tif.is_ome and tif.ome_metadata:
        image_index = _ome_image_index(tif, series, index)
        size = units.ome_pixel_size(tif.ome_metadata, image_index) if image_index >= 0 else None
        if size is not None:
            return size
    tags = series.keyframe.tags
    if tif.is_imagej:
        size = units.imagej_pixel_size(tif.imagej_metadata, tags)
        if size is not None:
            return size
        return None  # ImageJ with unit 'pixel' (or none): the tags are not a physical size
    return units.tiff_pixel_size(tags)


def _ome_image_index(tif: Any, series: Any, index: int) -> int:
    """The OME Image that holds this series: the one whose first TiffData IFD is the series' first
    page (tifffile skips Images without data in this file, so positions can differ); else a unique
    name; else the position when Images and series match one to one; -1 when it cannot be told."""
    import tifffile

    try:
        images = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        images = images if isinstance(images, list) else [images]
    except Exception:
        return -1
    first_page = getattr(series.pages[0], "index", None) if len(series.pages) else None
    by_ifd = [i for i, image in enumerate(images) if _first_ifd(image) == first_page]
    if first_page is not None and len(by_ifd) == 1:
        return by_ifd[0]
    names = [
        str(i.get("Name")) if isinstance(i, dict) and i.get("Name") is not None else None for i in images
    ]
    if series.name and names.count(str(series.name)) == 1:
        return names.index(str(series.name))
    return index if len(images) == len(tif.series) else -1


def _first_ifd(image: Any) -> int | None:
    pixels = image.get("Pixels") if isinstance(image, dict) else None
    data = pixels.get("TiffData") if isinstance(pixels, dict) else None
    if isinstance(data, list):
        data = data[0] if data else None
    if not isinstance(data, dict):
        return None
    try:
        return int(data.get("IFD", 0))
    except (TypeError, ValueError):
        return None


def _scaled(size: tuple[float, float], full: tuple[int, int], level: tuple[int, int]) -> tuple[float, float]:
    return (size[0] * full[0] / level[0], size[1] * full[1] / level[1])


def _strip_rows(data: Any) -> int | None:
    page = data.keyframe
    if page.is_tiled or page.compression == 1:
        return None
    rows = min(int(page.rowsperstrip or page.imagelength), int(page.imagelength))
    bytes_per_strip = rows * int(page.imagewidth) * int(page.samplesperpixel) * np.dtype(page.dtype).itemsize
    return rows if bytes_per_strip >= LARGE_STRIP_BYTES else None


# zarr / OME-Zarr -------------------------------------------------------------------------------
def _open_zarr(path: Path, level: int | None) -> Found:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise UserError(
            f"cannot open {path} as zarr ({exc}): give an OME-Zarr image or a zarr array"
        ) from None
    if isinstance(node, zarr.Array):
        if level not in (None, 0):
            raise OptionError(
                "level", f"{{level}} {level}: {literal(path)} is a single zarr array; drop {{level}}"
            )
        axes = _guess_axes(node.shape, path)
        return Found(node, axes, None, f"zarr array ({'x'.join(map(str, node.shape))}, axes {axes})")
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        raise UserError(
            f"{path} is a zarr group without OME-Zarr 'multiscales' metadata: give an image group or array"
        )
    try:
        meta = multiscales[0]
        datasets = list(meta.get("datasets", []))
        lev = 0 if level is None else level
        if not 0 <= lev < len(datasets):
            raise OptionError(
                "level",
                f"{{level}} {level} is out of range: {literal(path)} has {len(datasets)} level(s) "
                f"(0..{len(datasets) - 1})",
            )
        array = node[datasets[lev]["path"]]
        axes_meta = meta.get("axes") or [{"name": n} for n in "tczyx"[-array.ndim :]]
        axes_meta = [a if isinstance(a, dict) else {"name": a} for a in axes_meta]
        letters = "".join(NGFF_AXES.get(str(a.get("name", "")).lower(), "Q") for a in axes_meta)
        full = node[datasets[0]["path"]].shape
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} has malformed OME-Zarr metadata ({type(exc).__name__}: {exc})") from None
    if len(letters) != array.ndim or "Y" not in letters or "X" not in letters:
        raise UserError(
            f"{path}: the OME-Zarr axes {letters!r} do not fit the {array.ndim}-D array {array.shape}: "
            "check the multiscales metadata"
        )
    transforms = list(datasets[lev].get("coordinateTransformations", []))
    pixel_size = units.ngff_pixel_size(axes_meta, transforms)
    y, x = _yx(letters, array.shape)
    text = f"OME-Zarr level {lev} of {len(datasets)} ({y}x{x} px, axes {letters})"
    fy, fx = _yx(letters, full)
    return Found(array, letters, pixel_size, text, level_scale=(fy / y, fx / x))


def _guess_axes(shape: tuple[int, ...], path: Path) -> str:
    """A plain array has no axis names: YX, YXS (last axis of 3 or 4: RGB(A)), or CYX."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "YXS" if shape[-1] in (3, 4) else "CYX"
    raise UserError(
        f"{path} is a {len(shape)}-D zarr array without axis names: save it as OME-Zarr (with axes)"
    )


# PNG / JPEG / BMP ------------------------------------------------------------------------------
def _open_flat(path: Path) -> Found:
    import imagecodecs

    kind = path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    try:
        image = np.asarray(imagecodecs.imread(str(path)))
    except Exception as exc:
        raise UserError(
            f"cannot decode {path} as {kind} ({one_line(exc, 100)}): the file is truncated or not a {kind} "
            "image; check it, or convert it to TIFF"
        ) from None
    if image.ndim == 2:
        axes = "YX"
    elif image.ndim == 3 and image.shape[-1] in (2, 3, 4):
        axes = "YXS"
    else:
        raise UserError(f"{path} decodes to shape {image.shape}: give a grayscale or RGB image")
    y, x = image.shape[:2]
    return Found(image, axes, None, f"{path.suffix.lstrip('.').upper()} image ({y}x{x} px, axes {axes})")


def read_tiff_whole(path: Path, what: str, max_bytes: int | None = None) -> np.ndarray:
    """Level 0 of the largest series of a TIFF (the one `infer` segments), whole, for the commands
    that need whole images (eval, train, --calib). Raises UserError naming `what` for a missing,
    unreadable, truncated or implausibly large file (the size is checked from the header before
    anything is allocated)."""
    import tifffile

    max_bytes = MAX_WHOLE_BYTES if max_bytes is None else max_bytes
    path = Path(path)
    check_input_path(path, what)
    if not path.is_file():
        raise UserError(f"{what} {path} is a folder, not a TIFF file: give the image file")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise UserError(f"{what} {path} is not a readable TIFF (no image data): check the file")
            data = max(tif.series, key=_plane_pixels).levels[0]  # as infer: the full-resolution image
            size = int(np.prod(data.shape, dtype=np.float64) * np.dtype(data.dtype).itemsize)
            if size > max_bytes:
                raise UserError(
                    f"{what} {path} claims {'x'.join(map(str, data.shape))} px ({size / 2**30:.1f} GiB), "
                    f"more than the {max_bytes / 2**30:.0f} GiB read whole here: crop it or check the file"
                )
            if size == 0:
                raise UserError(
                    f"{what} {path} is an empty image (shape {data.shape}): pass an image with pixels"
                )
            return np.asarray(data.asarray())
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{what} {path} does not fit in memory: crop it") from None
    except OSError as exc:
        if exc.errno is not None:
            raise UserError(
                f"cannot read {what} {path}: {exc.strerror or exc}; check its permissions"
            ) from None
        raise UserError(
            f"{what} {path} is not a readable TIFF ({exc}): check that the file is complete"
        ) from None
    except Exception as exc:  # tifffile / imagecodecs raise many types for damaged data
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"{what} {path} is not a readable TIFF ({text}): check that the file is complete"
        ) from None
