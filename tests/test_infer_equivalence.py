"""The invariants that make chunked, tiled inference trustworthy: chunked labels equal whole-image
labels, tiled flows agree with the untiled network, the threaded pipeline equals the pure worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclepose_deploy import Segmenter
from cyclepose_deploy.runtime.dynamics import DynamicsSettings
from cyclepose_deploy.runtime.model.artifacts import resolve_model
from cyclepose_deploy.runtime.run.pipeline import Pipeline
from cyclepose_deploy.runtime.run.worker import ChunkJob, ChunkWorker
from cyclepose_deploy.runtime.source.slide import Slide, sample_normalization
from cyclepose_deploy.runtime.tiling.chunks import chunk_windows
from cyclepose_deploy.runtime.tiling.options import Tiling
from cyclepose_deploy.synth.slide import make_slide

pytest.importorskip("onnxruntime")
SHAPE = (544, 608)
FAST = {"tile": 128, "overlap": 16, "batch": 8, "whole_image": False}  # these tests are about tiles


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, nuclei_net: Callable) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("equiv")
    image, _ = make_slide(*SHAPE, 11)
    tifffile.imwrite(root / "slide.tif", image, tile=(64, 64), compression="zlib")
    return {"root": root, "slide": root / "slide.tif", "net": nuclei_net(root / "nuclei.onnx")}


def infer(case: dict[str, Path], name: str, **options: object) -> tuple[np.ndarray, object]:
    """Labels and result of the Segmenter on `case`'s slide (the model's own 20 px diameter unless a
    test asks for another)."""
    out = case["root"] / f"{name}.tif"
    with Segmenter(case["net"], **{**FAST, "diameter": 20.0, **options}) as seg:
        result = seg.segment_file(case["slide"], out, overwrite=True)
    return tifffile.imread(out), result


def test_chunked_labels_equal_whole_image_labels(case: dict[str, Path]) -> None:
    whole, s1 = infer(case, "whole", chunk=4096)
    chunked, s2 = infer(case, "chunked", chunk=192)
    assert s1.chunks == 1 and s2.chunks == 12 and whole.max() > 50
    np.testing.assert_array_equal(chunked, whole)  # the same numbering, not only the same objects
    assert s2.objects == s1.objects


def test_an_image_of_one_chunk_runs_as_one_tile_of_its_own_shape(case: dict[str, Path], f1: Callable) -> None:
    tiled, s1 = infer(case, "tiled")
    one, s2 = infer(case, "one", whole_image=True)
    cut, s3 = infer(case, "cut", whole_image=True, chunk=192)  # chunks smaller than the image: tiles
    assert (s1.tiles_grid, s2.tiles_grid, s3.tiles_grid) == (30, 1, 30)
    assert s2.tiles_run == 1 and np.array_equal(cut, tiled)
    assert f1(one, tiled) > 0.97  # the same nuclei; only the seams differ


def test_tiling_agrees_with_the_untiled_network(
    case: dict[str, Path], run_onnx: Callable, f1: Callable
) -> None:
    from cyclepose_deploy.runtime.dynamics import flows_to_labels

    slide = Slide(case["slide"])
    image = sample_normalization(slide).apply(slide.read(0, SHAPE[0], 0, SHAPE[1]))
    out = run_onnx(case["net"], image[None, None])[0]  # 544 x 608 are multiples of 16
    untiled = flows_to_labels(out[:2] / 5.0, out[2])
    tiled, _ = infer(case, "tiled", chunk=4096, tile=256, overlap=32)
    assert f1(tiled, untiled, 0.5) >= 0.99


def test_pipeline_equals_the_pure_chunk_worker(case: dict[str, Path], tmp_path: Path) -> None:
    """The threaded pipeline and the sequential worker (Dask tasks) are the same steps."""
    slide = Slide(case["slide"])
    model = resolve_model(case["net"])
    job = ChunkJob(
        Tiling(chunk=256, **FAST), DynamicsSettings(), model, sample_normalization(slide), slide.shape
    )
    chunks = chunk_windows(slide.shape, 256, job.halo)
    with model.runner() as runner:
        worker = ChunkWorker(job, slide, runner)
        piped = {r.chunk.index: r.ids for r in Pipeline(worker, chunks, tmp_path).results()}
        assert sorted(piped) == [c.index for c in chunks]
        for chunk in chunks[:4]:
            np.testing.assert_array_equal(worker.process(chunk).ids, piped[chunk.index])


def test_diameter_rescales_and_maps_labels_back(case: dict[str, Path], f1: Callable) -> None:
    base, _ = infer(case, "base", chunk=4096)
    big = np.kron(tifffile.imread(case["slide"]), np.ones((2, 2), np.uint16))
    tifffile.imwrite(case["root"] / "big.tif", big, tile=(128, 128))
    out = case["root"] / "big_labels.tif"
    with Segmenter(case["net"], **FAST) as seg:
        seg.segment_file(case["root"] / "big.tif", out, diameter=40.0)  # twice the model's 20 px
    labels = tifffile.imread(out)
    assert labels.shape == big.shape
    assert f1(labels[::2, ::2], base, 0.5) >= 0.9


def test_automatic_diameter_keeps_chunked_equal_to_whole(case: dict[str, Path]) -> None:
    """The estimate is a function of the slide, so chunking still cannot change the labels."""
    whole, s1 = infer(case, "auto_whole", chunk=4096, diameter=None)
    chunked, s2 = infer(case, "auto_chunked", chunk=192, diameter=None)
    assert s1.diameter is not None and s1.diameter == s2.diameter
    np.testing.assert_array_equal(chunked, whole)
    assert s1.objects == s2.objects


def test_automatic_diameter_follows_the_magnification(case: dict[str, Path]) -> None:
    """The same slide at twice the magnification gives a clearly larger estimate (this hand-made
    network is no segmenter; accuracy with a trained one: test_real_nuclei, slow)."""
    big = np.kron(tifffile.imread(case["slide"]), np.ones((2, 2), np.uint16))
    tifffile.imwrite(case["root"] / "big2.tif", big, tile=(128, 128))
    with Segmenter(case["net"], **FAST) as seg:
        one = seg.segment_file(case["slide"], case["root"] / "a1.tif").diameter
        two = seg.segment_file(case["root"] / "big2.tif", case["root"] / "a2.tif").diameter
    assert one is not None and two is not None
    assert 1.5 <= two.diameter / one.diameter <= 3.0
