"""The one backend seam (Polygraphy style): inputs are validated once here; subclasses fill `*_impl` hooks.

Everything a caller needs to know about a runner is on this class, for every backend: its input metadata
(name, channels, dtype, size multiple, shape limits), precision, device, the time of the last inference
and its phases, and the settings that change its speed (`info`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from cyclepose_deploy.defaults import INPUT_NAME, OUTPUT_NAME, SIZE_MULTIPLE
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


@dataclass(frozen=True)
class InputMetadata:
    """The one input a runner takes: float32 (N, channels, H, W), H and W multiples of `size_multiple`,
    within `shape_limits` when the backend has them (channels None: not known before activation)."""

    name: str
    channels: int | None
    dtype: np.dtype
    size_multiple: int
    shape_limits: ShapeLimits | None

    def check(self, batch: int, height: int, width: int) -> None:
        """Raise UserError when a (batch, H, W) input cannot run, naming the accepted sizes."""
        if batch < 1 or height < 1 or width < 1 or height % self.size_multiple or width % self.size_multiple:
            raise UserError(
                f"input of batch {batch} and {height}x{width} px cannot run: needs a non-empty batch with "
                f"H and W multiples of {self.size_multiple}; pad the tile"
            )
        if self.shape_limits is not None:
            self.shape_limits.check(batch, height, width)


class Runner:
    """Backend lifecycle: activate -> infer (float32 (N,C,H,W) -> float32 (N,3,H,W)) -> deactivate.

    After each `infer`: `last_inference_time` (seconds around the hook) and `last_timings` (the
    backend's own phases in seconds, e.g. TensorRT's h2d / compute / d2h from CUDA events; empty when
    the backend has none)."""

    def __init__(
        self,
        name: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels: int | None = None,
        size_multiple: int = SIZE_MULTIPLE,
        shape_limits: ShapeLimits | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.precision = precision
        self.channels = channels
        self.size_multiple = size_multiple
        self.shape_limits = shape_limits
        self.input_name = INPUT_NAME
        self.output_name = OUTPUT_NAME
        self.input_dtype = np.dtype(np.float32)
        self.is_active = False
        self.last_inference_time: float | None = None
        self.last_timings: dict[str, float] = {}

    # what callers need to know ----------------------------------------------------------------------
    def input_metadata(self) -> InputMetadata:
        """Name, channels, dtype and accepted sizes of the input (complete once activated)."""
        return InputMetadata(
            self.input_name, self.channels, self.input_dtype, self.size_multiple, self.shape_limits
        )

    def info(self) -> dict[str, Any]:
        """Settings that change this runner's speed (threads, providers, session options), JSON-ready."""
        return {}

    # lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> None:
        if self.is_active:
            return
        self.activate_impl()
        self.is_active = True
        try:
            self._probe()
        except BaseException:
            self.deactivate()
            raise

    def _probe(self) -> None:
        """Run one tile of background and one of a bright disc and check the I/O contract before any
        slide work: (N, C, H, W) float32 in, (N, 3, H, W) finite out (a model with other outputs, a fixed
        input size, another output size or broken weights giving NaN would otherwise fail hours into a
        run, or silently segment nothing)."""
        limits = self.shape_limits
        batch = limits.min_batch if limits else 1
        h, w = limits.opt_tile if limits else (4 * self.size_multiple, 4 * self.size_multiple)
        tile = np.zeros((batch, self.channels or 1, h, w), np.float32)
        yy, xx = np.mgrid[:h, :w]
        tile[:, :, (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2] = 1.0  # a bright "nucleus"
        try:
            out = np.asarray(self.infer_impl(tile))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"{self.name} cannot run a {h}x{w} px tile ({str(exc).splitlines()[0][:200]}): the runtime "
                f"needs dynamic H and W (multiples of {self.size_multiple}); re-export the model"
            ) from None
        expected = (batch, OUTPUT_CHANNELS, h, w)
        if out.shape != expected:
            raise UserError(
                f"{self.name} maps a {tile.shape} input to {out.shape}; the runtime needs {expected} "
                "(3 flow/cellprob channels, the input's size): export a CyclePose/Cellpose-style network"
            )
        if not np.isfinite(out).all():
            raise UserError(
                f"{self.name} gives NaN or infinite outputs for a plain test tile: its weights are broken "
                "(a diverged training or a damaged file); re-export it from a good checkpoint"
            )

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
        self.last_timings = {}
        start = time.perf_counter()
        out = self.infer_impl(batch)
        self.last_inference_time = time.perf_counter() - start
        expected = (batch.shape[0], OUTPUT_CHANNELS, batch.shape[2], batch.shape[3])
        if out.shape != expected:
            raise UserError(
                f"{self.name} returned shape {out.shape} for input {batch.shape}, expected {expected}"
            )
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
        self.input_metadata().check(n, h, w)
        return np.ascontiguousarray(batch)

    # hooks ----------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        """Load sessions, allocate buffers."""

    def deactivate_impl(self) -> None:
        """Release what activate_impl acquired."""

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError
