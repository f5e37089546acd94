"""Global tile grid, split -> merge and chunk windows: exactness and chunk independence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cyclepose_deploy.errors import OptionError
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.runtime.tiling.chunks import chunk_windows
from cyclepose_deploy.runtime.tiling.grid import TileGrid, taper
from cyclepose_deploy.runtime.tiling.merger import Merger
from cyclepose_deploy.runtime.tiling.options import Tiling
from cyclepose_deploy.runtime.tiling.splitter import split

IDENTITY = Normalization(0.0, 1.0)


class BoundedSource:
    """An in-memory source that fails any read outside the image (the splitter must never ask)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image.astype(np.float32)
        self.shape = image.shape

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        assert 0 <= y0 < y1 <= self.shape[0] and 0 <= x0 < x1 <= self.shape[1]
        return self.image[y0:y1, x0:x1]


def fake_net(images: np.ndarray) -> np.ndarray:
    """Identity-like per-pixel network: (x, 2x, -x)."""
    return np.concatenate([images, 2 * images, -images], axis=1)


def split_merge(source: BoundedSource, grid: TileGrid, window: tuple[int, int, int, int]) -> np.ndarray:
    merger = Merger(grid, window)
    for batch in split(source, IDENTITY, grid, window, batch=5):
        merger.add_batch(fake_net(batch.images), batch.origins)
    return merger.finalize()


def test_grid_covers_image_and_window_tiles_touch_it() -> None:
    grid = TileGrid((1000, 700), 256, 32)
    assert grid.origin(0) == -16 and grid.stride == 224
    for axis, size in ((0, 1000), (1, 700)):
        assert grid.origin(grid.count(axis) - 1) + 256 >= size
    for origin in grid.tiles((300, 310, 500, 505)):
        assert origin[0] < 310 and origin[0] + 256 > 300 and origin[1] < 505 and origin[1] + 256 > 500
    assert len(grid.tiles((0, 1000, 0, 700))) == grid.total


def test_bad_tile_and_overlap_raise_errors_naming_the_setting() -> None:
    with pytest.raises(
        OptionError, match="tile 100 must be a whole number from 16 to 2048 px, a multiple of 16"
    ):
        Tiling(tile=100, overlap=8)
    with pytest.raises(OptionError, match="overlap 48 must be at most half the tile") as caught:
        Tiling(tile=64, overlap=48)
    assert caught.value.option == "overlap"
    assert caught.value.render(lambda name: f"--{name}").startswith(
        "--overlap 48 must be at most half the --tile"
    )


def test_taper_is_positive_and_flat_inside() -> None:
    w = taper(64, 16)
    assert w.min() > 0 and w[32, 32] == 1.0 and w[0, 0] < w[8, 8]


def test_an_image_that_fits_runs_as_one_tile_of_its_padded_shape() -> None:
    grid = TileGrid.plan((520, 696), 256, 32, whole_image=True, chunk=2048)
    assert grid.sides == (560, 736) and grid.total == 1 and grid.origin(0, 1) == -16
    assert grid.tiles((0, 520, 0, 696)) == [(-16, -16)] and grid.weight.shape == (560, 736)
    assert grid.cover(grid.tiles((0, 520, 0, 696))) == (-16, 544, -16, 720)
    square = TileGrid((520, 696), 256, 32)
    assert TileGrid.plan((520, 696), 256, 32, whole_image=False, chunk=2048) == square
    # two chunks, or over WHOLE_PIXELS: square tiles, fitted to the image
    two_chunks = TileGrid.plan((520, 696), 256, 32, whole_image=True, chunk=512)
    assert two_chunks.sides == (288, 288) and two_chunks.total == 6 and square.total == 12
    large = TileGrid.plan((1100, 1000), 256, 32, whole_image=True, chunk=2048)
    assert large.sides == (400, 400) and large.total == 9 and TileGrid((1100, 1000), 256, 32).total == 25


def test_fitted_tiles_cover_the_image_with_the_fewest_network_pixels() -> None:
    """A 2144^2 working grid: 100 tiles of 256 px (6.55 MPix) or 25 of 464 (5.38 MPix); no side from
    256 to FIT_MAX_TILE px needs fewer pixels; the side never drops below --tile nor exceeds the chunk."""
    from cyclepose_deploy.runtime.tiling.grid import FIT_MAX_TILE, fitted_tile

    shape = (2144, 2144)
    grid = TileGrid.plan(shape, 256, 32, whole_image=True, chunk=2048)
    assert grid.sides == (464, 464) and grid.total == 25
    assert TileGrid(shape, 256, 32).total == 100
    for side in range(256, FIT_MAX_TILE + 1, 16):
        assert TileGrid(shape, side, 32).total * side**2 >= 25 * 464**2
    assert fitted_tile(shape, 320, 32, 2048) >= 320
    assert fitted_tile(shape, 256, 32, 300) <= 300
    assert fitted_tile((4000, 4000), 640, 32, 2048) == 640  # a --tile above FIT_MAX_TILE is kept
    assert TileGrid.plan(shape, 256, 32, whole_image=False, chunk=2048) == TileGrid(shape, 256, 32)


@pytest.mark.parametrize(
    "shape, grid",
    [
        ((300, 517), TileGrid((300, 517), 64, 16)),
        ((40, 33), TileGrid((40, 33), 64, 16)),
        ((300, 517), TileGrid.plan((300, 517), 64, 16, whole_image=True, chunk=2048)),
    ],
)
def test_identity_network_split_merge_reproduces_input(shape: tuple[int, int], grid: TileGrid) -> None:
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    out = split_merge(BoundedSource(image), grid, (0, shape[0], 0, shape[1]))
    np.testing.assert_allclose(out[0], image, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], 2 * image, rtol=1e-6, atol=1e-6)


def test_blend_does_not_depend_on_the_window() -> None:
    """A pixel's blended value comes from the same tiles in the same order whatever the chunk."""
    image = np.random.default_rng(2).random((260, 300), dtype=np.float32)
    source, grid = BoundedSource(image), TileGrid(image.shape, 64, 16)

    def nonlinear(window: tuple[int, int, int, int]) -> np.ndarray:
        merger = Merger(grid, window)
        for batch in split(source, IDENTITY, grid, window, batch=3):
            # a net whose output depends on the whole tile, so tiles truly differ where they overlap
            out = fake_net(batch.images) + batch.images.mean(axis=(1, 2, 3))[:, None, None, None]
            merger.add_batch(out, batch.origins)
        return merger.finalize()

    whole = nonlinear((0, 260, 0, 300))
    part = nonlinear((37, 150, 101, 299))
    np.testing.assert_array_equal(part, whole[:, 37:150, 101:299])


def test_chunk_windows_partition_the_slide() -> None:
    chunks = chunk_windows((1000, 700), 256, 40)
    cover = np.zeros((1000, 700), np.int32)
    for c in chunks:
        y0, y1, x0, x1 = c.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = c.window
        assert wy0 == max(0, y0 - 40) and wy1 == min(1000, y1 + 40) and wx1 == min(700, x1 + 40)
    assert (cover == 1).all()


def test_tile_plan_runs_every_tile_once_and_cache_empties(tmp_path: Path) -> None:
    from cyclepose_deploy.runtime.run.tilecache import TileCache, TilePlan

    grid = TileGrid((1000, 700), 128, 16)
    chunks = chunk_windows((1000, 700), 256, 40)
    plan = TilePlan(grid, chunks)
    assert plan.tiles_run == grid.total
    assert sum(len(c) for c in plan.compute.values()) + sum(len(r) for r in plan.reuse.values()) > grid.total
    cache = TileCache(tmp_path, plan)
    for k in range(len(chunks)):
        for origin in plan.reuse[k]:
            assert cache.take(origin)[0, 0, 0] == origin[0]
        for origin in plan.compute[k]:
            cache.put(origin, np.full((1, 2, 2), origin[0], np.float32))
    assert list(tmp_path.iterdir()) == []


def test_pipeline_stops_all_stages_when_the_network_fails(tmp_path: Path) -> None:
    from cyclepose_deploy.runtime.dynamics import DynamicsSettings
    from cyclepose_deploy.runtime.model.artifacts import Model
    from cyclepose_deploy.runtime.run.pipeline import Pipeline
    from cyclepose_deploy.runtime.run.worker import ChunkJob, ChunkWorker

    class Broken:
        calls = 0

        def infer(self, images: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("device lost")
            return fake_net(images)

    source = BoundedSource(np.zeros((2048, 2048), np.float32))
    reads: list[int] = []
    original = source.read
    source.read = lambda *w: reads.append(1) or original(*w)  # type: ignore[method-assign]
    tiling = Tiling(tile=64, overlap=16, batch=2, chunk=256)
    job = ChunkJob(tiling, DynamicsSettings(), Model(Path("m.onnx"), "onnx", "fp32"), IDENTITY, source.shape)
    chunks = chunk_windows(source.shape, 256, 16)
    with pytest.raises(RuntimeError, match="device lost"):
        list(Pipeline(ChunkWorker(job, source, Broken()), chunks, tmp_path).results())  # type: ignore[arg-type]
    assert len(reads) < len(chunks) // 4  # the reader stopped instead of reading the whole slide


@pytest.mark.parametrize(
    ("shape", "chunk", "tile", "expected"),
    [
        ((696, 520), 2048, 256, 704),  # a field: one chunk
        ((2144, 2144), 2048, 368, 1088),  # past PIPELINE_SIDE: 2 x 2 chunks, not one chunk and strips
        ((2353, 2353), 2048, 368, 1216),
        ((9000, 300), 2048, 256, 1856),  # 5 equal parts along the long side
        ((3000, 3000), 1000, 256, 1000),  # rounding up to 64 px never passes --chunk
        ((1100, 1100), 2048, 1024, 1024),  # never smaller than the tile
    ],
)
def test_work_block_cuts_the_grid_into_equal_chunks_of_at_most_chunk(
    shape: tuple[int, int], chunk: int, tile: int, expected: int
) -> None:
    from cyclepose_deploy.runtime.tiling.chunks import PIPELINE_SIDE, work_block

    block = work_block(shape, chunk, tile)
    assert block == expected and block <= chunk
    cores = chunk_windows(shape, block, 0)
    assert sum((c.core[1] - c.core[0]) * (c.core[3] - c.core[2]) for c in cores) == shape[0] * shape[1]
    if max(shape) > PIPELINE_SIDE:
        assert len(cores) >= 2


def _pipeline_case(tmp_path: Path) -> tuple[object, list]:
    """A ChunkWorker on a 1024^2 random image in 16 chunks of 256 px (fake network), and its chunks."""
    from cyclepose_deploy.runtime.dynamics import DynamicsSettings
    from cyclepose_deploy.runtime.model.artifacts import Model
    from cyclepose_deploy.runtime.run.worker import ChunkJob, ChunkWorker

    class Net:
        def infer(self, images: np.ndarray) -> np.ndarray:
            return fake_net(images)

    source = BoundedSource(np.random.default_rng(3).random((1024, 1024)).astype(np.float32))
    tiling = Tiling(tile=64, overlap=16, batch=2, chunk=256)
    job = ChunkJob(tiling, DynamicsSettings(), Model(Path("m.onnx"), "onnx", "fp32"), IDENTITY, source.shape)
    return ChunkWorker(job, source, Net()), chunk_windows(source.shape, 256, 16)  # type: ignore[arg-type]


def test_pipeline_keeps_each_blended_window_until_its_dynamics_are_done(tmp_path: Path) -> None:
    """The blender finalizes the next chunks into the other result slot while the dynamics read one:
    a window must not change under the dynamics (slow dynamics let the blender run ahead)."""
    import time

    from cyclepose_deploy.runtime.run.pipeline import Pipeline

    worker, chunks = _pipeline_case(tmp_path)
    segment = worker.segment  # type: ignore[attr-defined]
    changed: list[int] = []

    def slow_segment(chunk: object, blended: np.ndarray) -> object:
        before = blended.copy()
        time.sleep(0.03)  # the blender finalizes the next chunk meanwhile
        if not np.array_equal(before, blended):
            changed.append(1)
        return segment(chunk, blended)

    worker.segment = slow_segment  # type: ignore[attr-defined]
    piped = [r.chunk.index for r in Pipeline(worker, chunks, tmp_path / "a").results()]  # type: ignore[arg-type]
    assert changed == [] and piped == list(range(len(chunks)))


def test_pipeline_stops_all_stages_when_the_dynamics_fail(tmp_path: Path, finishes: Callable) -> None:
    """The dynamics fail while the blender waits for a result slot (both slots taken): every stage
    ends and the error reaches the caller, instead of the blender (or the reader) waiting forever."""
    import threading
    import time

    from cyclepose_deploy.runtime.run.pipeline import Pipeline

    worker, chunks = _pipeline_case(tmp_path)
    pipe = Pipeline(worker, chunks, tmp_path)  # type: ignore[arg-type]
    asking = threading.Event()
    take_slot = pipe._slot

    def slot() -> int:  # the blender asks for a slot
        if pipe.free_slots.empty():
            asking.set()  # ... and must wait: both are taken
        return take_slot()

    pipe._slot = slot  # type: ignore[method-assign]
    waited: list[bool] = []

    def segment(chunk: object, blended: np.ndarray) -> object:
        waited.append(asking.wait(10))
        time.sleep(0.05)  # the blender is inside its wait for a slot
        raise RuntimeError("out of memory")

    worker.segment = segment  # type: ignore[attr-defined]
    raised = finishes(lambda: list(pipe.results()))  # the pipeline must not hang
    assert waited == [True]  # the blender was waiting for a slot when the dynamics failed
    assert [str(e) for e in raised] == ["out of memory"]
