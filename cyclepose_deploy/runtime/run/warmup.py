"""Numba kernels loaded in a thread while a run reads and normalises its slide.

In a fresh process the first call of each numba kernel loads it from numba's cache (or compiles it):
about 0.5 s for the dynamics' 20 kernels, mostly in LLVM, which releases the GIL. Paid on the main
thread it lands in the diameter estimate's first pass or the first chunk; `start` overlaps it with
opening and normalising the slide (and the blob step). `join` comes before the first dynamics call of
the run: numba's fallback threading layer (workqueue, where neither TBB nor OpenMP is installed)
aborts the process when two threads launch its parallel kernels at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import numpy as np

_lock = threading.Lock()
_thread: threading.Thread | None = None  # set once per process


def _work() -> None:
    from cyclepose_deploy.runtime.dynamics.halo import warm_up
    from cyclepose_deploy.runtime.run.diameter import find_blobs

    with contextlib.suppress(Exception):  # a failure only means the run loads the kernels itself
        warm_up()
        yy, xx = np.mgrid[0:32, 0:32]
        find_blobs((((yy - 16) ** 2 + (xx - 16) ** 2) < 36).astype(np.float32))  # its numba loop


def start(register: Callable[[Callable[[], None]], object] | None = None) -> None:
    """Start loading once per process (later calls do nothing); `register(join)` (e.g. a run's
    ExitStack.callback) makes sure the run waits for the thread before it ends, error or not."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_work, name="numba-warm-up", daemon=True)
        _thread.start()
    if register is not None:
        register(join)


def join() -> None:
    """Wait for the loading thread, if one runs."""
    thread = _thread
    if thread is not None and thread is not threading.current_thread():
        thread.join()
