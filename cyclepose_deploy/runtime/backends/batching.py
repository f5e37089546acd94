"""Shared network batches for many small images at once (the dynamic batching of inference servers
such as Triton): several threads call `infer` with their own few tiles; calls that wait together are
concatenated into one network call of up to `max_batch` tiles, and each caller gets its own rows back.

A 256 x 256 field is one or a few tiles, so segmenting fields one by one runs the network on batches
of 1-4 tiles; in batch mode (cli/batch.py) several fields run in threads and their tiles share
batches. Each tile's output does not depend on its batch neighbours (the network has no batch
statistics at inference), so labels equal those of a field segmented alone.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cyclepose_deploy.limits import MAX_BATCH_PIXELS
from cyclepose_deploy.runtime.backends.base import Runner

LINGER_S = 0.002  # how long the first request of a batch waits for others to join it


@dataclass
class _Request:
    images: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    output: np.ndarray | None = None
    error: BaseException | None = None


class SharedBatcher(Runner):
    """A runner over an active runner, for concurrent callers: `infer` has the runner contract
    (float32 (N, C, H, W) -> float32 (N, 3, H, W)) and blocks until its rows are back; its metadata
    (channels, shape limits, device, precision) are the inner runner's. Requests of another tile size
    never share a batch, and a batch holds at most limits.MAX_BATCH_PIXELS px (one-tile images can be
    large). `calls` and `tiles` count network calls and tiles (mean batch = tiles / calls).
    activate() starts the batching thread; deactivate() serves what is queued, then stops it (later
    calls raise)."""

    def __init__(self, runner: Runner, max_batch: int, linger: float | None = None) -> None:
        super().__init__(
            f"shared:{runner.name}",
            device=runner.device,
            precision=runner.precision,
            channels=runner.channels,
            size_multiple=runner.size_multiple,
            shape_limits=runner.shape_limits,
        )
        self.runner, self.max_batch = runner, max(1, max_batch)
        self.linger = LINGER_S if linger is None else linger
        if self.shape_limits is not None:
            self.max_batch = min(self.max_batch, self.shape_limits.max_batch)
        self.calls = 0
        self.tiles = 0
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._held: _Request | None = None  # a request that did not fit the last batch
        self._closing = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="shared-batches", daemon=True)

    def info(self) -> dict[str, Any]:
        return {**self.runner.info(), "shared_batch": self.max_batch}

    def activate_impl(self) -> None:
        self.runner.activate()
        self._thread.start()

    def _probe(self) -> None:
        """The inner runner was probed when it was activated."""

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        request = _Request(batch)
        with self._closing:
            if self._closed:
                raise RuntimeError("the shared batcher is closed")
            self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.output is not None
        return request.output

    def deactivate_impl(self) -> None:
        """Serve what is queued, then stop; later `infer` calls raise instead of waiting."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            held, self._held = self._held, None
            return held
        return self._queue.get(timeout=timeout) if timeout is not None else self._queue.get()

    def _serve(self) -> None:
        while (first := self._next(None)) is not None:
            group, size = [first], len(first.images)
            pixels = first.images.shape[-2] * first.images.shape[-1]
            while size < self.max_batch:
                try:
                    more = self._next(self.linger)
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if (
                    more.images.shape[1:] != first.images.shape[1:]
                    or size + len(more.images) > self.max_batch
                    or (size + len(more.images)) * pixels > MAX_BATCH_PIXELS  # whole-image tiles
                ):
                    self._held = more
                    break
                group.append(more)
                size += len(more.images)
            self._run(group)
        # drain: answer anything left so no caller waits forever
        while True:
            try:
                left = self._held or self._queue.get_nowait()
            except queue.Empty:
                return
            self._held = None
            if left is not None:
                left.error = RuntimeError("the shared batcher was closed")
                left.done.set()

    def _run(self, group: list[_Request]) -> None:
        try:
            images = group[0].images if len(group) == 1 else np.concatenate([r.images for r in group])
            out = self.runner.infer(images)
            self.calls += 1
            self.tiles += len(images)
            start = 0
            for request in group:
                request.output = out[start : start + len(request.images)]
                start += len(request.images)
        except BaseException as exc:  # handed to every caller of this batch
            for request in group:
                request.error = exc
        for request in group:
            request.done.set()
