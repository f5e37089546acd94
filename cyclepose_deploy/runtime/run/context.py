"""One run's context (export's ExportContext idea): the options and the model it was given, and what the
run derives from the model and the slide as it goes (normalisation, diameter and scale, working source,
chunks, run folder, store, runner, cluster, timings), in one object that the stages of
runtime.run.infer fill in and read. Resources the run opens (slide, runner, cluster, temporary names)
close with the context."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import literal
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.runtime.run.diameter import DiameterEstimate
from cyclepose_deploy.runtime.run.options import InferOptions
from cyclepose_deploy.runtime.run.scratch import ScratchStore
from cyclepose_deploy.runtime.run.worker import ChunkJob, ChunkResult, ChunkWorker, SlideRef
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.source.slide import Source
from cyclepose_deploy.runtime.tiling.chunks import Chunk

Progress = Callable[[str, int, int], None]  # (task, advance, total)
Say = Callable[[str], None]


@dataclass(frozen=True)
class Outputs:
    """What a run writes. Files: labels (None keeps the labels in memory, the Python API), objects
    (CSV), preview (PNG), prob (uint8 TIFF), geojson (QuPath), rois (ImageJ .zip), zarr (an OME-Zarr
    folder). flows: keep the flows and probability in memory too (the API's return_flows)."""

    labels: Path | None
    objects: Path | None = None
    preview: Path | None = None
    prob: Path | None = None
    geojson: Path | None = None
    rois: Path | None = None
    zarr: Path | None = None
    flows: bool = False

    def files(self) -> list[Path]:
        paths = (self.labels, self.objects, self.preview, self.prob, self.geojson, self.rois)
        return [p for p in paths if p is not None]

    def all(self) -> list[Path]:
        return [*self.files(), *([self.zarr] if self.zarr is not None else [])]


def quiet(text: str) -> None:
    """A `say` that drops the notes."""


@dataclass
class RunContext:
    """One run. Given: options, model, outputs, and either `path` (a file to open) or `source` (an
    in-memory image); runner: an active runner to share (a Segmenter's), else the run opens its own;
    say: receives each note for the user, its settings already written as the caller names them
    (`name`: the API's argument names, or the CLI's flags; errors.OptionError); progress: (task,
    advance, total) callbacks. Derived by runtime.run.infer as the run goes: the rest."""

    options: InferOptions
    model: Model
    outputs: Outputs
    path: Path | None = None
    source: Any = None
    runner: Runner | None = None
    notes: Say = quiet
    progress: Progress = lambda *a: None  # noqa: E731
    name: Callable[[str], str] = str
    # derived
    norm: Normalization | None = None
    diameter: DiameterEstimate | None = None
    scale: float = 1.0
    working: Source | None = None
    chunks: list[Chunk] = field(default_factory=list)
    todo: list[Chunk] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    skipped: int = 0
    folder: Path | None = None
    token: str = ""
    store: ScratchStore | None = None
    # (scale, the one chunk) segmented by a confirmed diameter_guess (runtime.run.scale._confirm)
    prepared: tuple[float, ChunkResult] | None = None
    cluster: Any = None
    temps: dict[Path, Path] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> RunContext:
        self.stack.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.__exit__(*exc)

    def say(self, template: str) -> None:
        """Pass a note on, its {settings} named as the caller knows them."""
        try:
            text = template.format_map(_Names(self.name))
        except (KeyError, ValueError, IndexError):
            text = template
        self.notes(text)

    @property
    def ref(self) -> SlideRef | None:
        """How another process reopens the image (None: an in-memory image)."""
        return SlideRef(str(self.path), self.options.image) if self.path is not None else None

    def job(self) -> ChunkJob:
        """The chunk job of this run, from the context (runtime.run.worker)."""
        assert self.norm is not None and self.working is not None and self.runner is not None
        return ChunkJob(
            self.options.tiling,
            self.options.dynamics,
            self.model,
            self.norm,
            self.working.shape,
            self.runner.input_metadata().channels or 1,
            self.scale,
            self.ref,
            str(self.store.folder) if self.store is not None else "",
            self.outputs.prob is not None or self.outputs.flows,
            self.outputs.flows,
            self.token,
            self.cluster.threads if self.cluster is not None else self.options.run.threads,
        )

    def worker(self) -> ChunkWorker:
        assert self.working is not None and self.runner is not None
        return ChunkWorker(self.job(), self.working, self.runner)

    def timed(self, stage: str, since: float) -> None:
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - since


class _Names(dict):  # type: ignore[type-arg]
    def __init__(self, name: Callable[[str], str]) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, key: str) -> str:
        return self.name(key)


__all__ = ["Outputs", "Progress", "RunContext", "Say", "literal", "quiet"]
