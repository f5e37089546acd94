"""Read-ahead: an iterator's items made in a background thread while the caller works on the previous
ones (pass 2: the next block of labels is decoded and numbered while the current one is measured and
written)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """What `items` yields, in order, made in a daemon thread that starts at the first item asked for
    and keeps up to `depth` finished items waiting (and one more in the making). Worth it when both
    sides release the GIL for much of their time (numba kernels compiled with nogil, zarr's and
    tifffile's decoders, numpy). An exception raised while making an item (or closing `items`) is
    raised here, after the items made before it; closing this generator early (the caller failed)
    stops the thread after the item it is making, and `items` is closed in that thread."""
    made: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    break
        except BaseException as exc:  # raised in the caller's thread
            failure.append(exc)
        finally:
            try:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            except BaseException as exc:
                failure.append(exc)
            finally:  # always: the caller waits for it
                hand_over(_END)

    thread = threading.Thread(target=make, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := made.get()) is not _END:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        thread.join()
