"""Nucleus outlines for the viewers analysts use: QuPath GeoJSON (`--geojson`) and an ImageJ/Fiji ROI
set (`--rois`, written with the maintained `roifile` package), streamed from the final labels band by
band, so memory is bounded by a band of rows (plus the tallest nucleus), never by the slide. The
outlines follow pixel edges (runtime.polygons) of the final labels, so they are the same whether
the slide was chunked or not.

GeoJSON: a FeatureCollection of QuPath detections, one per nucleus: geometry Polygon (MultiPolygon
for a nucleus in several pieces), properties objectType "detection", classification "Nucleus", and
measurements (label, area px^2, mean intensity, and area µm^2 when the pixel size is known).
Coordinates are pixels of the full-resolution image, as QuPath expects.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.errors import OptionError
from cyclepose_deploy.runtime.outputs.polygons import outline

BAND = 512  # rows of labels read at once (plus the tallest nucleus that starts in the band)
NUCLEUS_COLOR = [255, 96, 0]


def write_outlines(
    read: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    rows: np.ndarray,
    geojson: Path | None,
    rois: Path | None,
    pixel_size: tuple[float, float] | None,
    level_scale: tuple[float, float] = (1.0, 1.0),
) -> int:
    """Trace every nucleus and stream its outline to `geojson` and/or `rois` (temporary paths; the
    caller renames them). read(y0, y1, x0, x1): a window of the final labels; rows: the object
    table's rows (runtime.objects.COLUMNS: label, centroid, area, bbox, mean intensity, ...).
    level_scale: (y, x) full-resolution px per labels px when a lower pyramid level was segmented:
    outlines are given in full-resolution pixels, where QuPath and Fiji place them on the slide.
    Returns the number of outlines written."""
    roi_zip = _open_rois(rois) if rois is not None else None
    handle = open(geojson, "w") if geojson is not None else None  # noqa: SIM115 (closed below)
    written = 0
    try:
        if handle is not None:
            handle.write('{"type": "FeatureCollection", "features": [\n')
        order = np.argsort(rows[:, 4], kind="stable") if rows.size else np.zeros(0, int)
        rows = rows[order]
        for r0 in range(0, shape[0], BAND):
            band = rows[(rows[:, 4] >= r0) & (rows[:, 4] < r0 + BAND)] if rows.size else rows
            if not band.size:
                continue
            y0, y1 = int(band[:, 4].min()), int(band[:, 6].max())
            x0, x1 = int(band[:, 5].min()), int(band[:, 7].max())
            window = read(y0, y1, x0, x1)
            for row in band:
                label = int(row[0])
                by0, bx0, by1, bx1 = (int(v) for v in row[4:8])
                mask = window[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] == label
                outer, holes = outline(mask, (by0, bx0))
                if not outer:
                    continue
                if level_scale != (1.0, 1.0):
                    factor = np.array([level_scale[1], level_scale[0]])
                    outer, holes = [r * factor for r in outer], [r * factor for r in holes]
                if handle is not None:
                    feature = _feature(label, outer, holes, row, pixel_size)
                    handle.write(("" if written == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
                if roi_zip is not None:
                    _add_roi(roi_zip, label, outer[0])
                written += 1
        if handle is not None:
            handle.write("\n]}\n")
    finally:
        if handle is not None:
            handle.close()
        if roi_zip is not None:
            roi_zip.close()
    return written


def _ring(ring: np.ndarray) -> list[list[float]]:
    points = ring.tolist()
    return [*points, points[0]]  # GeoJSON rings are closed


def _feature(
    label: int, outer: list[np.ndarray], holes: list[np.ndarray], row: np.ndarray, pixel_size: Any
) -> dict[str, Any]:
    if len(outer) == 1:
        geometry = {"type": "Polygon", "coordinates": [_ring(outer[0]), *(_ring(h) for h in holes)]}
    else:  # pieces: holes go with the largest piece
        parts = [[_ring(outer[0]), *(_ring(h) for h in holes)], *([_ring(o)] for o in outer[1:])]
        geometry = {"type": "MultiPolygon", "coordinates": parts}
    measurements: dict[str, float] = {"Label": label, "Area px^2": float(row[3])}  # px of the labels
    if np.isfinite(row[8]):
        measurements["Mean intensity"] = float(row[8])
    if pixel_size is not None:
        measurements["Area µm^2"] = float(row[3]) * pixel_size[0] * pixel_size[1]
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "name": f"Nucleus {label}",
            "classification": {"name": "Nucleus", "color": NUCLEUS_COLOR},
            "measurements": measurements,
        },
    }


def _open_rois(path: Path) -> zipfile.ZipFile:
    check_rois_available()
    return zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)


def _add_roi(archive: zipfile.ZipFile, label: int, ring: np.ndarray) -> None:
    import roifile

    roi = roifile.ImagejRoi.frompoints(np.round(ring).astype(np.int32))  # pixel corners
    roi.name = f"nucleus-{label}"
    archive.writestr(f"{label:06d}.roi", roi.tobytes())


def check_rois_available() -> None:
    """Fail before any work when the ROI set is asked for and roifile is missing."""
    try:
        import roifile  # noqa: F401
    except ImportError:
        raise OptionError("rois", "{rois} needs the roifile package: pip install roifile") from None
