"""Pass-1 storage: per-pixel seed ids (and probability) in a compressed zarr on disk, so memory stays
bounded by the chunk size while the final label numbering waits for the whole slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cyclepose_deploy.runtime.chunks import ChunkResult

BLOCK = 512


class ScratchStore:
    """Seed ids (uint64) and optional probability (uint8) for the working (possibly rescaled) grid."""

    def __init__(self, folder: str | Path, shape: tuple[int, int], keep_prob: bool) -> None:
        import zarr

        self.shape, self.folder = shape, Path(folder)
        self.ids = zarr.create_array(
            store=str(Path(folder) / "ids.zarr"),
            shape=shape,
            chunks=(BLOCK, BLOCK),
            dtype="uint64",
            fill_value=0,
        )
        self.prob = None
        if keep_prob:
            self.prob = zarr.create_array(
                store=str(Path(folder) / "prob.zarr"),
                shape=shape,
                chunks=(BLOCK, BLOCK),
                dtype="uint8",
                fill_value=0,
            )
        self._seen: list[np.ndarray] = []

    def write(self, result: ChunkResult) -> None:
        y0, y1, x0, x1 = result.chunk.core
        self.ids[y0:y1, x0:x1] = result.ids
        self._seen.append(np.unique(result.ids))
        if self.prob is not None:
            self.prob[y0:y1, x0:x1] = np.round(result.prob * 255).astype(np.uint8)
        if len(self._seen) > 64:
            self._seen = [np.unique(np.concatenate(self._seen))]

    def id_table(self) -> np.ndarray:
        """The sorted distinct nonzero ids: label k (1..N) is the k-th of them."""
        ids = np.unique(np.concatenate(self._seen)) if self._seen else np.zeros(0, np.uint64)
        return ids[ids != 0]
