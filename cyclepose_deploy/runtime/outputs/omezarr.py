"""The segmentation as OME-Zarr (NGFF, the version ome-zarr-py writes by default: 0.5 on zarr v3), the
layout viewers open at the path `--zarr` names: the root is the segmented image (the chosen plane and
channel, its original pixel type) as a multiscale image, and `labels/nuclei` the labels, an image-label
multiscale with the same level shapes, so napari (napari-ome-zarr), ome-zarr-py's Reader and
ome-zarr-models see the image with its nuclei on top. Levels are every second pixel of the level above
(nearest, never averaged, as the labels TIFF pyramid), each with the pixel size as its scale transform
(µm axes when the pixel size is known). Written chunk by chunk with dask from the slide and from the
labels OME-TIFF; optional dependencies asked for only by `--zarr` (`pip install ome-zarr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.errors import OptionError

LABEL_NAME = "nuclei"
ZARR_CHUNK = 512
NGFF_VERSION = "0.5"


def check_available() -> None:
    """Fail before any work when the OME-Zarr output is asked for and its writer is missing."""
    try:
        import dask.array  # noqa: F401
        import ome_zarr.writer  # noqa: F401
    except ImportError:
        raise OptionError("zarr", "{zarr} needs ome-zarr-py and dask: pip install ome-zarr") from None


def write_ome_zarr(
    source: Any, labels_tiff: Path, dest: Path, pixel_size: tuple[float, float] | None
) -> None:
    """dest (a new folder): the image of `source` (a runtime Source at the labels' resolution, read in
    ZARR_CHUNK windows) at the root, and labels/nuclei with every level of `labels_tiff`."""
    import dask.array as da
    import tifffile
    import zarr
    from ome_zarr.writer import write_multiscale, write_multiscale_labels

    with tifffile.TiffFile(labels_tiff) as tif:
        series = tif.series[0]
        shapes = [tuple(level.shape) for level in series.levels]
        labels = [da.from_zarr(zarr.open(series.aszarr(level=k), mode="r")) for k in range(len(shapes))]
        size = pixel_size or (1.0, 1.0)
        unit: dict[str, Any] = {"unit": "micrometer"} if pixel_size else {}
        axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
        transforms = [
            [{"type": "scale", "scale": [size[0] * shapes[0][0] / h, size[1] * shapes[0][1] / w]}]
            for h, w in shapes
        ]
        storage = {"chunks": (ZARR_CHUNK, ZARR_CHUNK)}
        root = zarr.open_group(str(dest), mode="w")
        image = _image_levels(source, shapes)
        write_multiscale(
            image, root, axes=axes, coordinate_transformations=transforms, storage_options=storage
        )
        write_multiscale_labels(
            labels,
            root,
            LABEL_NAME,
            axes=axes,
            coordinate_transformations=transforms,
            storage_options=storage,
        )
        # NGFF 0.5: the labels group states its version like every other OME group
        root["labels"].attrs["ome"] = {"version": NGFF_VERSION, "labels": [LABEL_NAME]}


def _image_levels(source: Any, shapes: list[tuple[int, ...]]) -> list[Any]:
    """Dask arrays of the image at each level's shape: level k is every 2^k-th pixel (nearest, as the
    labels), read window by window from the source, in its own pixel type where it has one."""
    import dask.array as da

    dtype = np.dtype(getattr(source, "dtype", np.float32))
    full = da.map_blocks(
        lambda block_info=None: _read(source, block_info, dtype),
        dtype=dtype,
        chunks=da.core.normalize_chunks((ZARR_CHUNK, ZARR_CHUNK), shapes[0]),
    )
    levels = [full]
    for k in range(1, len(shapes)):
        step = 2**k
        levels.append(full[::step, ::step][: shapes[k][0], : shapes[k][1]].rechunk(ZARR_CHUNK))
    return levels


def _read(source: Any, block_info: Any, dtype: np.dtype) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    window = source.read(y0, y1, x0, x1)
    if dtype.kind in "ui":  # the slide's integers came back as exact float32 values
        return np.asarray(window).astype(dtype)
    return np.asarray(window, dtype)
