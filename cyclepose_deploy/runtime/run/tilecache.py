"""Network tiles shared by neighbouring chunks' halos are computed once: the first chunk (in row-major
order) that needs a tile runs it, later chunks read its output back from a scratch folder on disk,
so memory stays bounded whatever the slide width and no network work is repeated."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from cyclepose_deploy.runtime.tiling.chunks import Chunk
from cyclepose_deploy.runtime.tiling.grid import TileGrid

Origin = tuple[int, int]


class TilePlan:
    """Which tiles each chunk runs (`compute`) and which it reads back (`reuse`)."""

    def __init__(self, grid: TileGrid, chunks: list[Chunk]) -> None:
        needed = [grid.tiles(c.window) for c in chunks]
        first: dict[Origin, int] = {}
        self.users: Counter[Origin] = Counter()
        for k, tiles in enumerate(needed):
            for t in tiles:
                first.setdefault(t, k)
                self.users[t] += 1
        # keyed by Chunk.index: a resumed run plans only the chunks that are left
        self.compute: dict[int, frozenset[Origin]] = {}
        self.reuse: dict[int, list[Origin]] = {}
        for k, (chunk, tiles) in enumerate(zip(chunks, needed, strict=True)):
            self.compute[chunk.index] = frozenset(t for t in tiles if first[t] == k)
            self.reuse[chunk.index] = [t for t in tiles if first[t] != k]

    @property
    def tiles_run(self) -> int:
        return sum(len(c) for c in self.compute.values())


class TileCache:
    """Tile outputs on disk, each deleted once its last user has read it."""

    def __init__(self, folder: str | Path, plan: TilePlan) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.left = Counter({t: n - 1 for t, n in plan.users.items() if n > 1})

    def _path(self, origin: Origin) -> Path:
        return self.folder / f"{origin[0]}_{origin[1]}.npy"

    def put(self, origin: Origin, output: np.ndarray) -> None:
        if self.left[origin] > 0:
            np.save(self._path(origin), output, allow_pickle=False)

    def take(self, origin: Origin) -> np.ndarray:
        path = self._path(origin)
        output = np.load(path, allow_pickle=False)
        self.left[origin] -= 1
        if self.left[origin] <= 0:
            path.unlink()
            del self.left[origin]
        return output
