"""Keep every cache inside a per-run temporary folder so tests write nothing to home folders."""

from __future__ import annotations

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="cyclepose-test-cache-")
for _var in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "TRITON_CACHE_DIR"):
    os.environ.setdefault(_var, os.path.join(_CACHE, _var.lower()))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_CACHE, "numba"))
os.environ.setdefault("OMP_NUM_THREADS", "2")
