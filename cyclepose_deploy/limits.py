"""Declared ranges: one Range (bounds, unit, example) for every number a user, a manifest or a checkpoint
gives, checked by `Range.check`, so a value obeys the same rule whether it comes from the CLI, the Python
API, a manifest or a checkpoint, and what one stage writes the next accepts.

Upper bounds are tied to the machine where a value costs memory or threads: threads and workers at most
THREADS_PER_CORE x the cores this process may use; sizes such that the largest buffer they imply fits in
memory (checked before anything is allocated). A failed check raises errors.OptionError naming the
setting, its value, the allowed range with its unit, and an example.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cyclepose_deploy.errors import OptionError, literal

THREADS_PER_CORE = 4
INDEX_MAX = 2**31 - 1  # series, level, plane, channel: file sizes are checked when the file is opened
SEED_MAX = 2**32 - 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cgroups), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Range:
    """low <= value <= high (in `unit`); integer: a whole number; multiple: a multiple of it."""

    low: float
    high: float
    unit: str = ""
    integer: bool = False
    multiple: int = 1
    example: str = ""

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        unit = f" {self.unit}" if self.unit else ""
        text = f"{kind} from {_num(self.low)} to {_num(self.high)}{unit}"
        if self.multiple > 1:
            text += f", a multiple of {self.multiple}"
        return text + (f" (e.g. {self.example})" if self.example else "")

    def check(self, option: str, value: Any) -> Any:
        """`value` as int (integer ranges) or float when it lies in the range; OptionError otherwise."""
        number = _number(value)
        ok = number is not None and math.isfinite(number) and self.low <= number <= self.high
        if ok and self.integer:
            ok = float(number).is_integer() and int(number) % self.multiple == 0  # type: ignore[arg-type]
        if not ok:
            raise OptionError(option, f"{{{option}}} {literal(_show(value))} must be {self.describe()}")
        return int(number) if self.integer else float(number)  # type: ignore[arg-type]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _num(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 or not float(value).is_integer() else f"{int(value):,}"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def threads() -> Range:
    """Threads (and Dask workers): 1 to THREADS_PER_CORE x the usable cores."""
    return Range(1, THREADS_PER_CORE * usable_cores(), "", integer=True, example=str(usable_cores()))


# `cyclepose infer` and the Segmenter (runtime/run/options.py) -------------------------------------
INFER: Mapping[str, Range] = {
    "tile": Range(16, 2048, "px", integer=True, multiple=16, example="256"),
    "overlap": Range(0, 1024, "px", integer=True, example="32"),
    "batch": Range(1, 256, "tiles", integer=True, example="8"),
    "chunk": Range(64, 8192, "px", integer=True, example="2048"),
    "cellprob_threshold": Range(-12, 12, "(logit)", example="0.0"),
    "flow_threshold": Range(0, 10, "(0 disables the check)", example="0.4"),
    "niter": Range(1, 2000, "steps", integer=True, example="200"),
    "min_size": Range(0, 1_000_000, "px", integer=True, example="15"),
    "diameter": Range(1, 2000, "px", example="17"),
    "diameter_guess": Range(1, 2000, "px", example="17"),
    "diameter_um": Range(0.05, 1000, "µm", example="6.5"),
    "percentile": Range(0, 100, "%", example="1,99.8"),
    "intensity": Range(-3.0e38, 3.0e38, "", example="100,4000"),  # float32's range
    "index": Range(0, INDEX_MAX, "(0-based)", integer=True, example="0"),
    "diameter_fields": Range(1, 10_000, "fields", integer=True, example="8"),
}
# tile x tile x batch: the network input and its largest activations must fit in memory
MAX_BATCH_PIXELS = 1 << 22  # 64 tiles of 256 x 256 (activations of S: ~1 GB at Cellpose widths)

# `cyclepose train` ------------------------------------------------------------------------------
TRAIN: Mapping[str, Range] = {
    "steps": Range(1, 1_000_000, "steps", integer=True, example="1200"),
    "tile": Range(32, 1024, "px", integer=True, multiple=16, example="128"),
    "batch": Range(1, 256, "crops", integer=True, example="8"),
    "width": Range(4, 1024, "channels", integer=True, example="32,64,128,256"),
    "diameter": Range(2, 500, "px", example="10-30"),
    "coverage": Range(0.02, 0.8, "(area fraction)", example="0.05-0.4"),
    "lr": Range(1e-7, 1.0, "", example="2e-4"),
    "seed": Range(0, SEED_MAX, "", integer=True, example="0"),
    "checkpoint_every": Range(0, 1_000_000, "steps", integer=True, example="200"),
    "max_minutes": Range(0.01, 1_000_000, "min", example="85"),
    "refine_steps": Range(0, 1_000_000, "steps", integer=True, example="600"),
    "refine_rounds": Range(1, 20, "rounds", integer=True, example="2"),
    "init_weight": Range(0.0, 0.9, "(share of the warm start's weights)", example="0.4"),
}
MAX_TRAIN_PIXELS = 1 << 22  # tile x tile x batch per step
MAX_WEIGHTS = 200_000_000  # S's weights: far above any segmenter here (~0.3 to 7 M); guards memory


def approx_weights(widths: Sequence[int]) -> int:
    """S's weight count, roughly: two 3x3 residual blocks down and two up per level (80 w^2)."""
    return sum(80 * w * w for w in widths)


# `cyclepose synth` ------------------------------------------------------------------------------
SYNTH: Mapping[str, Range] = {
    "size": Range(16, 65_536, "px", integer=True, example="2048"),
    "seed": Range(0, SEED_MAX, "", integer=True, example="1"),
    "diameter": Range(2, 500, "px", example="10-30"),
    "pixel_size": Range(1e-4, 1e4, "µm", example="0.65"),
}

# `cyclepose bench` ------------------------------------------------------------------------------
BENCH: Mapping[str, Range] = {
    "tile": INFER["tile"],
    "batch": INFER["batch"],
    "iters": Range(1, 100_000, "", integer=True, example="20"),
    "warmup": Range(0, 10_000, "", integer=True, example="3"),
}

# `cyclepose export` -----------------------------------------------------------------------------
EXPORT: Mapping[str, Range] = {
    "opset": Range(13, 21, "", integer=True, example="17"),
}

# manifest.json and the checkpoint's config: what export writes and the runtime reads ----------
MODEL: Mapping[str, Range] = {
    "diameter": Range(1, 1000, "px", example="[10, 30]"),
    "max_extent": Range(1, 4000, "px", example="52"),
    "flow_scale": Range(0.01, 100, "", example="5.0"),
    "percentile": Range(0, 100, "%", example="1 and 99"),
    "size_multiple": Range(1, 256, "px", integer=True, example="16"),
    "channels": Range(1, 2, "", integer=True, example="1"),
    "width": TRAIN["width"],
    "tile": TRAIN["tile"],
}


def check_pair(option: str, values: Any, bound: Range, ordered: bool = True) -> tuple[float, float]:
    """Two numbers (LO, HI) in `bound`, LO < HI when `ordered`; OptionError naming `option` otherwise."""
    try:
        low, high = values
    except (TypeError, ValueError):
        raise OptionError(
            option, f"{{{option}}} {literal(_show(values))} must be two numbers LO,HI, e.g. {bound.example}"
        ) from None
    low, high = bound.check(option, low), bound.check(option, high)
    if ordered and not low < high:
        raise OptionError(
            option, f"{{{option}}} {_num(low)},{_num(high)} needs LO < HI, e.g. {bound.example}"
        )
    return float(low), float(high)
