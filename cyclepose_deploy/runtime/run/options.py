"""One options object for a run: every knob of `cyclepose infer` and of the Segmenter, validated once,
in one place (ranges in cyclepose_deploy.limits), grouped by the part of the runtime that reads it, so
each part receives its group as it is (no field is copied from one object to another).

    InferOptions
      tiling     runtime.tiling.options.Tiling          tile, overlap, batch, chunk, tta, whole_image
      dynamics   runtime.dynamics.DynamicsSettings      cellprob_threshold, flow_threshold, niter, ...
      scale      ScaleOptions                           diameter, diameter_um, diameter_fields,
                                                            diameter_guess
      intensity  IntensityOptions                       norm_percentiles, norm_range
      image      runtime.source.slide.SlideOptions      channel, series, level, z, t, plane, pixel_size
      run        RunOptions                             scheduler, resume, skip_empty, threads, overwrite

Callers set options by their flat names, `InferOptions.of(tile=512, diameter=17)` or
`options.updated(...)`: each name goes to its group; an unknown name is an OptionError listing the known
ones, so a misspelt option never passes silently. Messages name settings as {name}; the CLI writes them
as its flags (errors.OptionError).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cyclepose_deploy import limits
from cyclepose_deploy.errors import OptionError, literal
from cyclepose_deploy.runtime.dynamics.segment import DynamicsSettings
from cyclepose_deploy.runtime.source.slide import SlideOptions
from cyclepose_deploy.runtime.tiling.options import Tiling


@dataclass(frozen=True)
class ScaleOptions:
    """diameter: median nucleus diameter in px (None: estimated per image, runtime.run.scale);
    diameter_um: the same in µm (needs a pixel size); diameter_fields: in batch mode, estimate once
    from the first N images and use that diameter for all of them (one acquisition; None: per image);
    diameter_guess: px, the automatic estimate's first guess (batch mode passes the first image's
    estimate to the others): one network pass checks it (runtime.run.scale._confirm); when it agrees,
    a field that runs as one tile keeps the guess and that pass's segmentation, a larger image its
    measurement at the guess's scale; else the image is estimated from scratch."""

    diameter: float | None = None
    diameter_um: float | None = None
    diameter_fields: int | None = None
    diameter_guess: float | None = None

    def __post_init__(self) -> None:
        for name in ("diameter", "diameter_um", "diameter_fields", "diameter_guess"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, limits.INFER[name].check(name, value))
        if self.diameter is not None and self.diameter_um is not None:
            raise OptionError("diameter", "{diameter} and {diameter_um} both given: pass one")


@dataclass(frozen=True)
class IntensityOptions:
    """norm_percentiles: (low, high) percentiles mapped to 0 and 1 instead of the model's; norm_range:
    fixed (min, max) intensities instead of statistics of the image (plates imaged alike)."""

    norm_percentiles: tuple[float, float] | None = None
    norm_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.norm_percentiles is not None:
            pair = limits.check_pair("norm_percentiles", self.norm_percentiles, limits.INFER["percentile"])
            object.__setattr__(self, "norm_percentiles", pair)
        if self.norm_range is not None:
            pair = limits.check_pair("norm_range", self.norm_range, limits.INFER["intensity"])
            object.__setattr__(self, "norm_range", pair)
        if self.norm_percentiles is not None and self.norm_range is not None:
            raise OptionError(
                "norm_range",
                "{norm_range} and {norm_percentiles} both given: a fixed range replaces the percentiles; "
                "pass one",
            )


@dataclass(frozen=True)
class RunOptions:
    """scheduler: None runs the chunks in this process (threads); 'local', 'local:N' or a Dask scheduler
    address runs them as dask.distributed tasks (runtime.run.distributed); resume: finish an interrupted
    run from its run folder (runtime.run.runfolder); skip_empty: chunks without tissue
    (runtime.run.tissue) skip the network; threads: ONNX Runtime threads (per Dask worker; None: all
    cores); overwrite: replace outputs that exist (and an interrupted run with other settings)."""

    scheduler: str | None = None
    resume: bool = False
    skip_empty: bool = True
    threads: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None:
            object.__setattr__(self, "threads", limits.threads().check("threads", self.threads))
        for name in ("resume", "skip_empty", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(
                    name, f"{{{name}}} must be True or False, got {literal(getattr(self, name))}"
                )
        if self.scheduler is not None:
            from cyclepose_deploy.runtime.run.distributed import parse_scheduler

            parse_scheduler(self.scheduler)


GROUPS = {
    "tiling": Tiling,
    "dynamics": DynamicsSettings,
    "scale": ScaleOptions,
    "intensity": IntensityOptions,
    "image": SlideOptions,
    "run": RunOptions,
}
_GROUP_OF = {f.name: group for group, kind in GROUPS.items() for f in fields(kind)}


@dataclass(frozen=True)
class InferOptions:
    """Every knob of a run, by group (module docstring); all defaults give `cyclepose infer`'s run."""

    tiling: Tiling = field(default_factory=Tiling)
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)
    scale: ScaleOptions = field(default_factory=ScaleOptions)
    intensity: IntensityOptions = field(default_factory=IntensityOptions)
    image: SlideOptions = field(default_factory=SlideOptions)
    run: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def of(cls, **options: Any) -> InferOptions:
        """Options from flat names (e.g. tile=512, diameter=17); OptionError for an unknown name."""
        return cls().updated(**options)

    def updated(self, **options: Any) -> InferOptions:
        """A copy with the named options changed (each validated by its group)."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            group = _GROUP_OF.get(name)
            if group is None:
                known = ", ".join(sorted(_GROUP_OF))
                raise OptionError(name, f"unknown option {{{name}}}; the options are: {known}")
            changes.setdefault(group, {})[name] = value
        try:
            return replace(self, **{g: replace(getattr(self, g), **c) for g, c in changes.items()})
        except TypeError as exc:  # a value of the wrong kind inside a group's own checks
            raise OptionError(next(iter(options)), f"bad option value ({literal(exc)})") from None

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (JSON-ready: tuples as lists)."""
        out: dict[str, Any] = {}
        for group in GROUPS:
            for key, value in dataclasses.asdict(getattr(self, group)).items():
                out[key] = list(value) if isinstance(value, tuple) else value
        return out
