"""The tiling knobs of a run, validated once (ranges in cyclepose_deploy.limits)."""

from __future__ import annotations

from dataclasses import dataclass

from cyclepose_deploy import limits
from cyclepose_deploy.defaults import BATCH, CHUNK, OVERLAP, TILE
from cyclepose_deploy.errors import OptionError


@dataclass(frozen=True)
class Tiling:
    """How a slide is cut for the network and for the dynamics.

    tile: network tile side (px, a multiple of 16); overlap: px neighbouring tiles share, blended with
    a taper (at most tile / 2); batch: tiles per network call; chunk: side of a work chunk's core (px,
    at least the tile), which bounds the memory; tta: test-time augmentation, each tile also run
    flipped in y, in x and in both, the flows averaged (Cellpose's `augment`; 4x the network work);
    whole_image: the tiling fits the image (TileGrid.plan): an image that fits one tile of at most
    tiling.grid.WHOLE_PIXELS (1024^2 px) runs as one tile of its own shape, a larger one as square
    tiles of the side from `tile` to FIT_MAX_TILE (480) px that covers it with the fewest network
    pixels (CPU runners only: run.infer turns it off on a GPU, where each new input shape is tuned or
    built again).
    Raises OptionError naming the setting."""

    tile: int = TILE
    overlap: int = OVERLAP
    batch: int = BATCH
    chunk: int = CHUNK
    tta: bool = False
    whole_image: bool = True

    def __post_init__(self) -> None:
        for name in ("tile", "overlap", "batch", "chunk"):
            object.__setattr__(self, name, limits.INFER[name].check(name, getattr(self, name)))
        if self.overlap > self.tile // 2:
            raise OptionError(
                "overlap",
                f"{{overlap}} {self.overlap} must be at most half the {{tile}} ({self.tile // 2} px)",
            )
        if self.chunk < self.tile:
            raise OptionError(
                "chunk", f"{{chunk}} {self.chunk} must be at least the {{tile}} ({self.tile} px)"
            )
        if self.batch * self.tile * self.tile > limits.MAX_BATCH_PIXELS:
            raise OptionError(
                "batch",
                f"{{batch}} {self.batch} of {self.tile} px tiles is {self.batch * self.tile**2:,} px per "
                f"network call, over the {limits.MAX_BATCH_PIXELS:,} that fit in memory: lower {{batch}}",
            )
        for name in ("tta", "whole_image"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, f"{{{name}}} must be True or False, got {getattr(self, name)!r}")
