"""Pass-1 storage: per-pixel seed ids (and optional probability) in compressed zarr arrays on disk, so
memory stays bounded by the chunk size while the final label numbering waits for the whole slide.

The zarr chunks tile the work chunks' cores exactly (their side divides the work chunk size), so each
work chunk writes only its own zarr chunks: workers in other processes or on other machines
(runtime.distributed) write side by side without locks, while pass 2 decodes small chunks. (zarr
shards of one work chunk each were tried: pass 2's partial reads of them cost +73 % time and +118 MB
on a 16384 px slide.) A chunk is finished when its marker `done/NNNNNN.npy` (its distinct seed ids)
exists; the marker is renamed into place after the pixels are written, so a killed writer leaves no
marker and the chunk is simply run again (`--resume`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.runtime.run.worker import ChunkResult

INNER = 512  # px: the zarr chunk that pass 2 decodes (a 256-row block of labels reads few of them)


def inner_block(block: int) -> int:
    """The zarr chunk side for work chunks of `block` px: the largest divisor of `block` up to INNER
    (so no zarr chunk spans two work chunks), or `block` itself when that divisor is below 64 px."""
    best = max(d for d in range(1, min(block, INNER) + 1) if block % d == 0)
    return best if best >= 64 else block


def finished_chunks(folder: str | Path) -> set[int]:
    """Indices of the chunks whose marker is in `folder`/done (empty when there is none)."""
    return {int(p.stem) for p in (Path(folder) / "done").glob("[0-9]*.npy")}


STORE_PARTS = ("ids.zarr", "prob.zarr", "flows.zarr", "done")


def damage(folder: str | Path, shape: tuple[int, int], keep_prob: bool, keep_flows: bool) -> str | None:
    """What is wrong with an interrupted run's store before it is resumed, or None when it is whole:
    each array this run needs opens with the working grid's shape and its dtype, and each chunk
    marker is a 1-D uint64 array (read without pickle). Costs one small read per finished chunk."""
    import zarr

    folder = Path(folder)
    wanted = [("ids.zarr", "uint64", shape)]
    wanted += [("prob.zarr", "uint8", shape)] if keep_prob else []
    wanted += [("flows.zarr", "float32", (2, *shape))] if keep_flows else []
    for name, dtype, full in wanted:
        try:
            array = zarr.open_array(store=str(folder / name), mode="r")
        except Exception:  # zarr raises several kinds for a missing or damaged array
            return f"{name} is missing or unreadable"
        if tuple(array.shape) != full or str(array.dtype) != dtype:
            return f"{name} holds {array.dtype} {tuple(array.shape)}, not {dtype} {full}"
    for marker in sorted((folder / "done").glob("[0-9]*.npy")):
        try:
            seeds = np.load(marker, allow_pickle=False)
        except (OSError, ValueError):
            return f"the chunk marker done/{marker.name} is unreadable"
        if seeds.ndim != 1 or seeds.dtype != np.uint64:
            return f"the chunk marker done/{marker.name} is not a list of seed ids"
    return None


def clear(folder: str | Path) -> None:
    """Remove the store and its chunk markers (the run folder's settings stay)."""
    import shutil

    for name in STORE_PARTS:
        shutil.rmtree(Path(folder) / name, ignore_errors=True)


class ScratchStore:
    """Seed ids (uint64), optional probability (uint8) and unit flows (float32, 2 planes) on the
    working (possibly rescaled) grid.

    folder: where ids.zarr, prob.zarr, flows.zarr and done/ live; shape: (H, W) px of the working grid;
    block: the work chunk size in px (see inner_block); create: False opens an existing store (a
    worker, or a resumed run)."""

    def __init__(
        self,
        folder: str | Path,
        shape: tuple[int, int],
        keep_prob: bool,
        block: int,
        keep_flows: bool = False,
        create: bool = True,
    ) -> None:
        import zarr

        self.shape, self.folder = shape, Path(folder)
        self.markers = self.folder / "done"

        def array(name: str, dtype: str, planes: tuple[int, ...] = ()) -> Any:
            path = str(self.folder / name)
            if not create:
                return zarr.open_array(store=path, mode="r+")
            inner = inner_block(block)
            return zarr.create_array(
                store=path,
                shape=(*planes, *shape),
                chunks=(*planes, inner, inner),
                dtype=dtype,
                fill_value=0,
                overwrite=True,
            )

        if create:
            self.markers.mkdir(parents=True, exist_ok=True)
        self.ids = array("ids.zarr", "uint64")
        self.prob = array("prob.zarr", "uint8") if keep_prob else None
        self.flows = array("flows.zarr", "float32", (2,)) if keep_flows else None

    def write(self, result: ChunkResult) -> int:
        """Store one chunk's core and mark it finished; returns its number of distinct seeds."""
        y0, y1, x0, x1 = result.chunk.core
        self.ids[y0:y1, x0:x1] = result.ids
        if self.prob is not None:
            self.prob[y0:y1, x0:x1] = np.round(result.prob * 255).astype(np.uint8)
        if self.flows is not None and result.flows is not None:
            self.flows[:, y0:y1, x0:x1] = result.flows
        seeds = result.seeds if result.seeds is not None else np.unique(result.ids)
        seeds = seeds[seeds != 0]
        marker = self.markers / f"{result.chunk.index:06d}.npy"
        handle, temp = tempfile.mkstemp(prefix=f".{marker.stem}.", suffix=".tmp", dir=self.markers)
        try:
            with os.fdopen(handle, "wb") as out:
                np.save(out, seeds, allow_pickle=False)
            os.replace(temp, marker)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return int(seeds.size)

    def done(self) -> set[int]:
        """Indices of the finished chunks."""
        return finished_chunks(self.folder)

    def id_table(self) -> np.ndarray:
        """The sorted distinct nonzero ids: label k (1..N) is the k-th of them."""
        parts = [np.load(p, allow_pickle=False) for p in sorted(self.markers.glob("[0-9]*.npy"))]
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        return ids[ids != 0].astype(np.uint64)
