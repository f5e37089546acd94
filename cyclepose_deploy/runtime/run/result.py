"""What a run produced and how it went: the typed result of `Segmenter.segment` / `segment_file` and of
`cyclepose infer` (which prints it, and writes `to_dict()` as --summary-json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.runtime.run.diameter import DiameterEstimate


@dataclass
class SegmentResult:
    """One image's segmentation.

    labels: (H, W) instance labels, 0 = background, 1..N nuclei (in memory: the `segment` API; None
    when they were written to a file); flows: (2, H, W) float32 unit flows dY, dX and prob: (H, W)
    float32 cell probability, at the image's resolution (with `return_flows=True`; else None).
    objects: N; shape: (H, W) px; diameter: the median nucleus diameter used (px) and how it was
    found; scale: the rescale applied before the network (trained diameter / diameter); pixel_size:
    (y, x) µm of the image or None; image: which series / level / plane was segmented; seconds and
    times (per stage, threads overlap): wall time; chunks, tiles_run, tiles_grid, skipped (chunks
    without tissue), resumed (chunks kept from an interrupted run), ran, workers (Dask workers, 0:
    this process); outputs: the files written; model: the artifact that ran."""

    objects: int
    shape: tuple[int, int]
    seconds: float
    chunks: int
    tiles_run: int
    tiles_grid: int
    times: dict[str, float] = field(default_factory=dict)
    diameter: DiameterEstimate | None = None
    scale: float = 1.0
    pixel_size: tuple[float, float] | None = None
    image: str = ""
    labels: np.ndarray | None = field(default=None, repr=False)
    flows: np.ndarray | None = field(default=None, repr=False)
    prob: np.ndarray | None = field(default=None, repr=False)
    skipped: int = 0
    resumed: int = 0
    ran: int = 0
    workers: int = 0
    outputs: list[Path] = field(default_factory=list)
    model: str = ""

    @property
    def mpix_per_s(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)

    @property
    def tile_overhead(self) -> float:
        """Network tiles run more than once because chunk halos overlap (0.0 = none)."""
        return self.tiles_run / max(self.tiles_grid, 1) - 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the arrays."""
        est = self.diameter
        return {
            "model": self.model,
            "objects": self.objects,
            "shape": list(self.shape),
            "seconds": self.seconds,
            "mpix_per_s": self.mpix_per_s,
            "chunks": self.chunks,
            "chunks_skipped_empty": self.skipped,
            "chunks_resumed": self.resumed,
            "chunks_run": self.ran,
            "workers": self.workers,
            "tiles_run": self.tiles_run,
            "tiles_grid": self.tiles_grid,
            "stage_seconds": self.times,
            "outputs": [str(p) for p in self.outputs],
            "diameter": None
            if est is None
            else {
                "px": est.diameter,
                "method": est.method,
                "blob_px": est.blob,
                "objects_measured": est.objects,
            },
            "scale": self.scale,
            "image": self.image,
            "pixel_size_um": list(self.pixel_size) if self.pixel_size else None,
        }
