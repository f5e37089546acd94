"""Labels as OME-Zarr (NGFF, the version ome-zarr-py writes by default: 0.5 on zarr v3): a multiscale
`labels/nuclei` image-label group, written chunk by chunk from the labels OME-TIFF pyramid (the same
nearest-neighbour levels), with the pixel size as the scale transform of each level (µm axes).

Uses the maintained writer (ome-zarr-py) and dask to stream: optional dependencies, asked for only by
`--zarr` (`pip install ome-zarr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import OptionError

LABEL_NAME = "nuclei"
ZARR_CHUNK = 512


def check_available() -> None:
    """Fail before any work when the OME-Zarr output is asked for and its writer is missing."""
    try:
        import dask.array  # noqa: F401
        import ome_zarr.writer  # noqa: F401
    except ImportError:
        raise OptionError("zarr", "{zarr} needs ome-zarr-py and dask: pip install ome-zarr") from None


def write_labels_zarr(labels_tiff: Path, dest: Path, pixel_size: tuple[float, float] | None) -> None:
    """dest (a new folder): an OME-Zarr with labels/nuclei holding every level of `labels_tiff`."""
    import dask.array as da
    import tifffile
    import zarr
    from ome_zarr.writer import write_multiscale_labels

    with tifffile.TiffFile(labels_tiff) as tif:
        series = tif.series[0]
        shapes = [tuple(level.shape) for level in series.levels]
        pyramid = [da.from_zarr(zarr.open(series.aszarr(level=k), mode="r")) for k in range(len(shapes))]
        size = pixel_size or (1.0, 1.0)
        unit: dict[str, Any] = {"unit": "micrometer"} if pixel_size else {}
        axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
        transforms = [
            [{"type": "scale", "scale": [size[0] * shapes[0][0] / h, size[1] * shapes[0][1] / w]}]
            for h, w in shapes
        ]
        root = zarr.open_group(str(dest), mode="w")
        write_multiscale_labels(
            pyramid,
            root,
            LABEL_NAME,
            axes=axes,
            coordinate_transformations=transforms,
            storage_options={"chunks": (ZARR_CHUNK, ZARR_CHUNK)},
        )
