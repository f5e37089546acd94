"""Pass 1 in this process: the chunk worker's steps (runtime.run.worker) as a pipeline of threads,
reader -> network -> blend -> dynamics -> caller, with bounded queues, so the slowest stage sets the
pace and memory stays bounded. Tiles that neighbouring chunks' halos share run once
(runtime.run.tilecache).

Blend and dynamics are separate threads so that the next chunk is blended while the dynamics run
(their kernels release the GIL): when the network is cheap (a GPU, or the CPU side measured on its
own) the dynamics thread is the slowest, and blending in it added the blend's time to every chunk.
The two threads share two result slots of the worker's blend memory (merger.BlendBuffers): the
blender finalizes a chunk only into a slot the dynamics have released, so at most two blended
windows exist at once."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cyclepose_deploy.runtime.run.tilecache import TileCache, TilePlan
from cyclepose_deploy.runtime.run.worker import ChunkResult, ChunkWorker
from cyclepose_deploy.runtime.tiling.chunks import Chunk
from cyclepose_deploy.runtime.tiling.merger import Merger

DONE = object()
SLOTS = 2  # blended windows at once: one in the dynamics, one finalized and waiting for them
Advance = Callable[[int], None]


class _Stopped(Exception):
    """Unwinds a worker once another stage has failed or the consumer has gone."""


class Pipeline:
    """Runs `chunks` through four threads; `results()` yields ChunkResults in chunk order.
    on_tiles(n): called as each batch of n tiles leaves the network."""

    def __init__(
        self, worker: ChunkWorker, chunks: list[Chunk], cache_dir: str | Path, on_tiles: Advance | None = None
    ) -> None:
        self.worker, self.chunks = worker, chunks
        self.plan = TilePlan(worker.grid, chunks)
        self.cache = TileCache(cache_dir, self.plan)
        self.on_tiles = on_tiles or (lambda n: None)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.times: dict[str, float] = defaultdict(float)
        self.tiles_run = 0
        # one item in flight between stages: the network sets the pace; blended windows (~80 MB at a
        # 2048 px chunk + halo) are bounded by the SLOTS of the blend memory, not by these queues
        self.queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=1) for _ in range(4)]
        self.free_slots: queue.Queue[int] = queue.Queue()
        for slot in range(SLOTS):
            self.free_slots.put(slot)

    def results(self) -> Iterator[ChunkResult]:
        stages = [self._reader, self._network, self._blend, self._dynamics]
        threads = [threading.Thread(target=self._guard, args=(s,), daemon=True) for s in stages]
        try:
            for t in threads:
                t.start()
            while (item := self._get(self.queues[3])) is not DONE:
                yield item
        finally:
            self.stop.set()
            for t in threads:
                if t.is_alive():
                    t.join()
        if self.errors:
            raise self.errors[0]

    # plumbing ------------------------------------------------------------------------------------
    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self.errors.append(exc)
            self.stop.set()

    def _put(self, q: queue.Queue, item: Any) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _get(self, q: queue.Queue) -> Any:
        while True:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if self.stop.is_set():
                    return DONE

    def _slot(self) -> int:
        """A result slot the dynamics have released (waits for one)."""
        if self.stop.is_set() or (slot := self._get(self.free_slots)) is DONE:
            raise _Stopped
        return slot

    def _timed(self, stage: str, start: float) -> None:
        self.times[stage] += time.perf_counter() - start

    # stages: the worker's steps --------------------------------------------------------------------
    def _reader(self) -> None:
        for chunk in self.chunks:
            start = time.perf_counter()
            for batch in self.worker.batches(chunk, frozenset(self.plan.reuse[chunk.index])):
                self._timed("read", start)
                self._put(self.queues[0], (chunk, batch))
                start = time.perf_counter()
            self._put(self.queues[0], (chunk, None))
        self._put(self.queues[0], DONE)

    def _network(self) -> None:
        while (item := self._get(self.queues[0])) is not DONE:
            chunk, batch = item
            if batch is not None:
                start = time.perf_counter()
                item = (chunk, (self.worker.network(batch), batch))
                self._timed("network", start)
                self.tiles_run += len(batch.origins)
                self.on_tiles(len(batch.origins))
            self._put(self.queues[1], item)
        self._put(self.queues[1], DONE)

    def _blend(self) -> None:
        merger: Merger | None = None
        while (item := self._get(self.queues[1])) is not DONE:
            chunk, payload = item
            start = time.perf_counter()
            if merger is None:
                merger = self.worker.merger(chunk)
                for origin in self.plan.reuse[chunk.index]:
                    merger.add(self.cache.take(origin), origin)
            if payload is not None:
                outputs, batch = payload
                merger.add_batch(outputs, batch.origins)
                for origin, output in zip(batch.origins, outputs, strict=True):
                    self.cache.put(origin, output)
                self._timed("blend", start)
                continue
            self._timed("blend", start)
            slot = self._slot()  # not timed: waiting for the dynamics
            start = time.perf_counter()
            blended = merger.finalize(slot)
            merger = None
            self._timed("blend", start)
            self._put(self.queues[2], (chunk, blended, slot))
            del blended  # the dynamics hold it now
        self._put(self.queues[2], DONE)

    def _dynamics(self) -> None:
        while (item := self._get(self.queues[2])) is not DONE:
            chunk, blended, slot = item
            del item  # no reference to the window may outlive its slot
            start = time.perf_counter()
            result = self.worker.segment(chunk, blended)
            del blended
            self.free_slots.put(slot)
            self._timed("dynamics", start)
            self._put(self.queues[3], result)
        self._put(self.queues[3], DONE)
