"""Native TensorRT backend (TensorRT 10/11 tensor API) with cuda-python buffers and a stream.

The GPU part is thin; everything decided on the host (engine compatibility, profile shape checks, buffer
sizes) is plain functions, unit-tested with fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cyclepose_deploy import optional
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends import cuda
from cyclepose_deploy.runtime.backends.base import OUTPUT_CHANNELS, Runner, ShapeLimits

if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = optional.LazyModule("tensorrt", "10.0")

FLOAT32_BYTES = 4


@dataclass
class TensorRTInfo:
    """Engines only run on the TensorRT version and GPU they were built for."""

    version: str
    gpu: str
    compute_capability: str
    profile: dict[str, Any] = field(default_factory=dict)


def check_compatible(info: TensorRTInfo, trt_version: str, gpu: str, compute_capability: str) -> None:
    """Engines run only on the TensorRT version and GPU they were built for; say which differs."""
    problems = []
    if info.version != trt_version:
        problems.append(f"TensorRT {info.version} (this machine has {trt_version})")
    if info.compute_capability != compute_capability or info.gpu != gpu:
        problems.append(f"{info.gpu}, compute {info.compute_capability} (here: {gpu}, {compute_capability})")
    if problems:
        raise UserError(
            f"this engine was built for {' and '.join(problems)}: rebuild it here with "
            "`cyclepose export CHECKPOINT -o DIR --engine`, or use the ONNX model"
        )


def limits_from_profile(shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]) -> ShapeLimits:
    """ShapeLimits from an optimisation profile's (min, opt, max) NCHW input shapes."""
    low, opt, high = shapes
    return ShapeLimits(low[0], opt[0], high[0], (low[2], low[3]), (opt[2], opt[3]), (high[2], high[3]))


def buffer_bytes(limits: ShapeLimits, channels: int) -> tuple[int, int]:
    """Input and output buffer sizes for the profile's largest batch and tile."""
    pixels = limits.max_batch * limits.max_tile[0] * limits.max_tile[1]
    return pixels * channels * FLOAT32_BYTES, pixels * OUTPUT_CHANNELS * FLOAT32_BYTES


def engine_io(engine: trt.ICudaEngine) -> tuple[str, str]:
    """(input name, output name) of a one-input, one-output engine."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"engine has tensors {names}; expected one input and one output: re-export it")
    return inputs[0], outputs[0]


class TensorRTRunner(Runner):
    """Runs a serialized engine; `last_timings` has the GPU time of h2d/compute/d2h (CUDA events)."""

    def __init__(self, path: str | Path, engine_info: TensorRTInfo, channels: int) -> None:
        super().__init__(f"tensorrt:{Path(path).name}", device="cuda", precision="fp16", channels=channels)
        self.path, self.engine_info = Path(path), engine_info
        self._buffers: list[cuda.DeviceBuffer | cuda.PinnedBuffer] = []

    def info(self) -> dict[str, Any]:
        """What the engine is tied to (TensorRT version, GPU) and the profile it was built with."""
        e = self.engine_info
        return {"tensorrt": e.version, "gpu": e.gpu, "compute_capability": e.compute_capability, **e.profile}

    def activate_impl(self) -> None:
        gpu, capability = cuda.device_properties(0)
        check_compatible(self.engine_info, trt.__version__, gpu, capability)
        self._trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._trt_runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not load {self.path}: rebuild with `cyclepose export --engine`")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = engine_io(self.engine)
        shapes = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.shape_limits = limits_from_profile(tuple(tuple(s) for s in shapes))  # type: ignore[arg-type]
        self._allocate()

    def _allocate(self) -> None:
        assert self.shape_limits is not None and self.channels is not None
        in_bytes, out_bytes = buffer_bytes(self.shape_limits, self.channels)
        self.stream = cuda.Stream()
        self.d_in, self.d_out = cuda.DeviceBuffer(in_bytes), cuda.DeviceBuffer(out_bytes)
        self.h_in, self.h_out = cuda.PinnedBuffer(in_bytes), cuda.PinnedBuffer(out_bytes)
        self._buffers = [self.d_in, self.d_out, self.h_in, self.h_out]
        self.context.set_tensor_address(self.input_name, self.d_in.ptr)
        self.context.set_tensor_address(self.output_name, self.d_out.ptr)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        out_shape = (n, OUTPUT_CHANNELS, h, w)
        self.h_in.array[: batch.size] = batch.ravel()
        self.context.set_input_shape(self.input_name, batch.shape)
        out_bytes = int(np.prod(out_shape)) * FLOAT32_BYTES
        self.stream.mark(0)
        self.stream.to_device(self.d_in, self.h_in, batch.nbytes)
        self.stream.mark(1)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.mark(2)
        self.stream.to_host(self.h_out, self.d_out, out_bytes)
        self.stream.mark(3)
        self.stream.synchronize()
        self.last_timings = self.stream.phase_seconds()
        return self.h_out.array[: out_bytes // FLOAT32_BYTES].reshape(out_shape).copy()

    def deactivate_impl(self) -> None:
        for buffer in self._buffers:
            buffer.free()
        self._buffers = []
        if hasattr(self, "stream"):
            self.stream.destroy()
        self.context = self.engine = None  # type: ignore[assignment]
