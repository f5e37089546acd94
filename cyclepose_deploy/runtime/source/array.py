"""An image already in memory (numpy, zarr or dask array) as a runtime source."""

from __future__ import annotations

from typing import Any

import numpy as np

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.source.normalize import check_float32_range, fill_missing
from cyclepose_deploy.runtime.source.units import check_pixel_size


class ArraySource:
    """A 2-D array-like as a source: float32 windows, missing (NaN/Inf) float pixels filled like a
    slide's (a dask array is computed one window at a time; filled: False for pixels a source has
    filled already). pixel_size: (y, x) µm or None. Raises UserError for another shape or pixel type."""

    def __init__(
        self, array: Any, pixel_size: Any = None, description: str = "array", filled: bool = False
    ) -> None:
        shape = tuple(int(n) for n in getattr(array, "shape", ()))
        dtype = np.dtype(getattr(array, "dtype", np.float32))
        if len(shape) != 2:
            raise UserError(f"segment() takes a 2-D (H, W) image, got shape {shape}: pick one plane/channel")
        if dtype.kind not in "uif":
            raise UserError(f"segment() takes integer or float pixels, got {dtype}: convert the image")
        if min(shape) < 1:
            raise UserError(f"segment() got an empty image of shape {shape}")
        self.array = array
        self.shape = (shape[0], shape[1])
        self.pixel_size = check_pixel_size(pixel_size) if pixel_size is not None else None
        self.file_pixel_size = self.pixel_size
        self.level_scale = (1.0, 1.0)
        self.float_pixels = dtype.kind == "f" and not filled
        self.wide_floats = dtype.kind == "f" and dtype.itemsize > 4
        self.description = f"{description} ({shape[0]}x{shape[1]} px, {dtype})"
        self.notes: list[str] = []

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        window = np.asarray(self.array[y0:y1, x0:x1])
        if self.wide_floats:
            check_float32_range(window, f"the image (at y={y0}, x={x0})")
        window = np.asarray(window, dtype=np.float32)
        return fill_missing(window) if self.float_pixels else window

    def close(self) -> None:
        """Nothing to release (the caller owns the array)."""
