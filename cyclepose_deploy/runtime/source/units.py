"""Physical pixel size (µm) from the metadata of what was actually read: OME-XML (PhysicalSize*Unit),
ImageJ (unit + resolution tags), plain TIFF resolution tags, and OME-Zarr (NGFF) scale transforms.

Each reader returns (y, x) in micrometres or None. None is the honest answer when the file does not
say: a wrong size (the classic one: an OME size in nm read as µm) is worse than none.
"""

from __future__ import annotations

from typing import Any

from cyclepose_deploy.errors import OptionError, literal

# unit name -> micrometres; OME UnitsLength symbols, ImageJ spellings and NGFF (UDUNITS) names
LENGTH_IN_UM = {
    "pm": 1e-6,
    "picometer": 1e-6,
    "Å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "µm": 1.0,  # micro sign U+00B5
    "μm": 1.0,  # Greek mu U+03BC
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00B5m": 1.0,  # ImageJ writes the micro sign escaped in its metadata string
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
}
TIFF_RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}  # ResolutionUnit tag: 2 inch, 3 centimetre
# Resolution tags in dots per inch are mostly a writer's print default (72, 96, 300 dpi = 353, 265,
# 85 µm); a microscope image's pixels are far smaller, so inch-based sizes above this are ignored.
MAX_INCH_PIXEL_UM = 20.0
PIXEL_SIZE_RANGE_UM = (1e-4, 1e4)


def unit_factor(unit: object) -> float | None:
    """Micrometres per `unit` (e.g. 'nm' -> 0.001), None for an unknown unit or 'pixel'."""
    return LENGTH_IN_UM.get(str(unit).strip()) if unit is not None else None


def ome_pixel_size(xml: str, image_index: int = 0) -> tuple[float, float] | None:
    """(y, x) µm of OME Image `image_index` (its Pixels element), honouring PhysicalSize{Y,X}Unit
    (OME's default unit is µm); None when absent, malformed or in a unit we cannot convert."""
    import tifffile

    try:
        images = tifffile.xml2dict(xml).get("OME", {}).get("Image")
    except Exception:  # malformed XML: other sources may still know
        return None
    if isinstance(images, dict):
        images = [images]
    if not isinstance(images, list) or not 0 <= image_index < len(images):
        return None
    image = images[image_index]
    pixels = image.get("Pixels") if isinstance(image, dict) else None
    if not isinstance(pixels, dict):
        return None
    sizes = []
    for axis in "YX":
        value = pixels.get(f"PhysicalSize{axis}")
        factor = unit_factor(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if not isinstance(value, (int, float)) or factor is None or not value > 0:
            return None
        sizes.append(float(value) * factor)
    return _plausible((sizes[0], sizes[1]))


def imagej_pixel_size(metadata: dict | None, tags: Any) -> tuple[float, float] | None:
    """(y, x) µm of an ImageJ hyperstack: the resolution tags are pixels per `unit` (ImageJ writes
    ResolutionUnit NONE and names the unit in its metadata string, e.g. unit=micron)."""
    if not metadata or "XResolution" not in tags or "YResolution" not in tags:
        return None
    factor = unit_factor(metadata.get("unit"))
    if factor is None:
        return None
    ry, rx = (_ratio(tags[f"{a}Resolution"].value) for a in "YX")
    if not (ry > 0 and rx > 0):
        return None
    return _plausible((factor / ry, factor / rx))


def tiff_pixel_size(tags: Any) -> tuple[float, float] | None:
    """(y, x) µm from plain TIFF resolution tags in centimetres, or in inches when the result is a
    microscope's pixel (not a print default, see MAX_INCH_PIXEL_UM)."""
    unit_tag = tags.get("ResolutionUnit")
    unit = int(getattr(unit_tag, "value", 2)) if unit_tag is not None else 2  # TIFF default: inch
    per_unit = TIFF_RESOLUTION_UNIT_UM.get(unit)
    if per_unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    ry, rx = (_ratio(tags[f"{a}Resolution"].value) for a in "YX")
    if not (ry > 0 and rx > 0):
        return None
    size = (per_unit / ry, per_unit / rx)
    if unit == 2 and max(size) > MAX_INCH_PIXEL_UM:
        return None
    return _plausible(size)


def ngff_pixel_size(axes: list[dict], transforms: list[dict]) -> tuple[float, float] | None:
    """(y, x) µm of one OME-Zarr multiscale dataset: its `scale` transform times the unit of the y and
    x axes (NGFF 0.4: UDUNITS names such as 'micrometer')."""
    names = [str(a.get("name", "")).lower() for a in axes]
    scale = next((t.get("scale") for t in transforms if t.get("type") == "scale"), None)
    if "y" not in names or "x" not in names or not isinstance(scale, list) or len(scale) != len(names):
        return None
    sizes = []
    for name in ("y", "x"):
        i = names.index(name)
        factor = unit_factor(axes[i].get("unit"))
        value = scale[i]
        if factor is None or not isinstance(value, (int, float)) or not value > 0:
            return None
        sizes.append(float(value) * factor)
    return _plausible((sizes[0], sizes[1]))


def parse_pixel_size(text: str) -> tuple[float, float]:
    """A pixel size as text, 'S' or 'Y,X' in µm -> (y, x); OptionError when not positive and finite."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    low, high = PIXEL_SIZE_RANGE_UM
    if len(values) not in (1, 2) or not all(low <= v <= high for v in values):
        raise OptionError(
            "pixel_size",
            f"{{pixel_size}} {literal(repr(text))} must be one size or Y,X in µm between {low:g} and "
            f"{high:g}, e.g. 0.325",
        )
    return (values[0], values[-1])


def check_pixel_size(size: object, what: str = "pixel_size") -> tuple[float, float]:
    """A (y, x) pixel size in µm given through the Python API: two finite numbers in range, or
    OptionError naming `what`."""
    low, high = PIXEL_SIZE_RANGE_UM
    try:
        y, x = (float(v) for v in size)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise OptionError(
            what, f"{{{what}}} {literal(repr(size))} must be (y, x) in µm, e.g. (0.325, 0.325)"
        ) from None
    if not (low <= y <= high and low <= x <= high):
        raise OptionError(what, f"{{{what}}} {literal(repr(size))} must lie between {low:g} and {high:g} µm")
    return (y, x)


def _plausible(size: tuple[float, float]) -> tuple[float, float] | None:
    low, high = PIXEL_SIZE_RANGE_UM
    return size if all(low <= s <= high for s in size) else None


def _ratio(value: Any) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if len(value) == 2 and value[1] else 0.0
    return float(value)
