"""Thin cuda-python helpers for the TensorRT runner: device/pinned buffers, a stream, events for GPU time.

Every cudart call returns (error, *values); `check` turns an error into an exception once, here."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

import numpy as np

from cyclepose_deploy import optional

if TYPE_CHECKING:
    from cuda.bindings import runtime as cudart
else:
    cudart = optional.LazyModule("cuda.bindings.runtime")


def check(result: tuple[Any, ...]) -> Any:
    """Unwrap a cudart result: raise on error, return the single value (or the tuple of values)."""
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {int(err)} ({err!r})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_properties(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor'), recorded with an engine and checked before running it."""
    props: cudart.cudaDeviceProp = check(cudart.cudaGetDeviceProperties(device))
    raw = props.name
    name = raw.decode(errors="replace").rstrip("\x00") if isinstance(raw, bytes) else str(raw)
    return name, f"{props.major}.{props.minor}"


class DeviceBuffer:
    """cudaMalloc'd memory of `nbytes`; `ptr` is what set_tensor_address takes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr: int = int(check(cudart.cudaMalloc(nbytes)))

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFree(self.ptr))
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory viewed as a float32 numpy array (fast, truly async copies)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr: int = int(check(cudart.cudaMallocHost(nbytes)))
        raw = (ctypes.c_float * (nbytes // 4)).from_address(self.ptr)
        self.array: np.ndarray = np.ctypeslib.as_array(raw)

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFreeHost(self.ptr))
            self.ptr = 0


class Stream:
    """A CUDA stream with async host<->device copies and event-based GPU timing."""

    def __init__(self) -> None:
        self.handle = check(cudart.cudaStreamCreate())
        self.events = [check(cudart.cudaEventCreate()) for _ in range(4)]  # h2d | compute | d2h marks

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int) -> None:
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self.handle))

    def to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int) -> None:
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self.handle))

    def mark(self, index: int) -> None:
        """Record event `index` (0..3) on the stream: before h2d, before compute, before d2h, after d2h."""
        check(cudart.cudaEventRecord(self.events[index], self.handle))

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.handle))

    def phase_seconds(self) -> dict[str, float]:
        """GPU time of each phase between the marks (call after synchronize)."""
        names = ("h2d", "compute", "d2h")
        pairs = zip(self.events[:-1], self.events[1:], strict=True)
        ms = [check(cudart.cudaEventElapsedTime(a, b)) for a, b in pairs]
        return {name: float(t) / 1000.0 for name, t in zip(names, ms, strict=True)}

    def destroy(self) -> None:
        for event in self.events:
            check(cudart.cudaEventDestroy(event))
        check(cudart.cudaStreamDestroy(self.handle))
