"""The one backend seam (Polygraphy style): inputs are validated once here; subclasses fill `*_impl` hooks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from cyclepose_deploy.errors import UserError

OUTPUT_CHANNELS = 3


@dataclass(frozen=True)
class ShapeLimits:
    """Batch and tile (H, W) ranges a backend accepts, e.g. from a TensorRT optimisation profile."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_tile: tuple[int, int]
    opt_tile: tuple[int, int]
    max_tile: tuple[int, int]

    def check(self, batch: int, height: int, width: int) -> None:
        """Raise UserError naming the accepted range when (batch, H, W) falls outside it."""
        if not self.min_batch <= batch <= self.max_batch:
            raise UserError(
                f"batch {batch} is outside this engine's profile [{self.min_batch}, {self.max_batch}]: "
                "choose a batch in that range or rebuild the engine with another profile"
            )
        for axis, size, low, high in (
            ("height", height, self.min_tile[0], self.max_tile[0]),
            ("width", width, self.min_tile[1], self.max_tile[1]),
        ):
            if not low <= size <= high:
                raise UserError(
                    f"tile {axis} {size} is outside this engine's profile [{low}, {high}]: "
                    "choose a tile in that range or rebuild the engine with another profile"
                )


class Runner:
    """Backend lifecycle: activate -> infer (float32 (N,C,H,W) -> float32 (N,3,H,W)) -> deactivate."""

    def __init__(
        self,
        name: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels: int | None = None,
        size_multiple: int = 16,
        shape_limits: ShapeLimits | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.precision = precision
        self.channels = channels
        self.size_multiple = size_multiple
        self.shape_limits = shape_limits
        self.is_active = False
        self.last_inference_time: float | None = None

    # lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> None:
        if self.is_active:
            return
        self.activate_impl()
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    # inference ------------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Validate the batch once for all backends, run the hook, check and time the result."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} must be activated before infer (use it as a context)")
        batch = self.validate_input(batch)
        start = time.perf_counter()
        out = self.infer_impl(batch)
        self.last_inference_time = time.perf_counter() - start
        expected = (batch.shape[0], OUTPUT_CHANNELS, batch.shape[2], batch.shape[3])
        if out.shape != expected:
            raise RuntimeError(f"runner {self.name} returned shape {out.shape}, expected {expected}")
        return np.asarray(out, dtype=np.float32)

    def validate_input(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = getattr(batch, "dtype", type(batch).__name__)
            raise UserError(f"{self.name} expects a float32 numpy batch, got {got}: use .astype(np.float32)")
        if batch.ndim != 4:
            raise UserError(f"{self.name} expects a (N, C, H, W) batch, got shape {batch.shape}")
        n, c, h, w = batch.shape
        if self.channels is not None and c != self.channels:
            raise UserError(f"{self.name} expects {self.channels} input channel(s), got {c}: check channels")
        if n < 1 or h % self.size_multiple or w % self.size_multiple or h == 0 or w == 0:
            raise UserError(
                f"{self.name} needs a non-empty batch with H and W multiples of {self.size_multiple}, "
                f"got {batch.shape}: pad the tile"
            )
        if self.shape_limits is not None:
            self.shape_limits.check(n, h, w)
        return np.ascontiguousarray(batch)

    # hooks ----------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        """Load sessions, allocate buffers."""

    def deactivate_impl(self) -> None:
        """Release what activate_impl acquired."""

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError
