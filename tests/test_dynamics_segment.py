"""flows_to_labels and the chunked runtime path: round trips, chunk invariance, edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.metrics import match_instances
from cyclepose_deploy.runtime.dynamics import (
    DynamicsSettings,
    chunk_halo,
    flows_to_labels,
    labels_to_flows,
    owned_ids,
    segment_chunk,
)
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.synth.shapes import ShapePrior, pack_instances
from cyclepose_deploy.synth.slide import make_slide

MAX_EXTENT = ShapePrior().max_extent()  # the longest nucleus make_slide's default prior can draw


def _logits(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


@pytest.fixture(scope="module")
def slide() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, unit flows, logits) of a 2048 x 2048 synthetic slide with many touching nuclei."""
    _, labels = make_slide(2048, 2048, seed=3)
    return labels, labels_to_flows(labels), _logits(labels)


def _chunked(
    flows: np.ndarray,
    cellprob: np.ndarray,
    step: int,
    settings: DynamicsSettings = DynamicsSettings(),
    halo: int | None = None,
) -> np.ndarray:
    """Run segment_chunk over a grid of cores, then compact ids to 1..N in ascending order."""
    height, width = cellprob.shape
    halo = chunk_halo(MAX_EXTENT, settings.niter) if halo is None else halo
    ids = np.zeros((height, width), np.uint64)
    owners: list[np.ndarray] = []
    for y in range(0, height, step):
        for x in range(0, width, step):
            y0, x0 = max(0, y - halo), max(0, x - halo)
            y1, x1 = min(height, y + step + halo), min(width, x + step + halo)
            core = (slice(y - y0, min(y + step, height) - y0), slice(x - x0, min(x + step, width) - x0))
            part = segment_chunk(
                flows[:, y0:y1, x0:x1],
                cellprob[y0:y1, x0:x1],
                core=core,
                origin=(y0, x0),
                image_shape=(height, width),
                settings=settings,
            )
            ids[y : y + step, x : x + step] = part
            owners.append(owned_ids(part, (y, x), (height, width)))
    owned = np.concatenate(owners)
    assert np.array_equal(np.sort(owned), np.unique(ids[ids > 0])), "each object must have exactly one owner"
    _, compact = np.unique(ids, return_inverse=True)
    return compact.reshape(ids.shape).astype(np.uint32)


@pytest.mark.slow  # a 2048 x 2048 slide: about 15 s with its fixture
def test_round_trip_recovers_ground_truth(slide: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    labels, flows, logits = slide
    assert labels.max() > 1500
    result = flows_to_labels(flows, logits)
    assert result.dtype == np.uint32
    assert match_instances(result, labels, thresholds=(0.9,)).at(0.9).ap >= 0.99


@pytest.mark.slow
def test_chunked_equals_whole(slide: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, flows, logits = slide
    whole = flows_to_labels(flows, logits)
    np.testing.assert_array_equal(_chunked(flows, logits, 512), whole)


def test_chunked_equals_whole_on_noisy_flows() -> None:
    """Noise makes ragged objects, histogram ties and dropped masks: the rules must still be local."""
    rng = np.random.default_rng(5)
    labels = pack_instances(rng, (1024, 768))
    flows = labels_to_flows(labels) + rng.normal(0, 0.3, (2, 1024, 768)).astype(np.float32)
    logits = _logits(labels) + rng.normal(0, 3, labels.shape).astype(np.float32)
    whole = flows_to_labels(flows, logits)
    assert whole.max() > 100
    np.testing.assert_array_equal(_chunked(flows, logits, 512), whole)


def test_chunked_equals_whole_with_elongated_nuclei_across_chunk_borders() -> None:
    """Nuclei up to 6:1 long, on chunks of 128 px: many lie across borders and are far longer than
    their mean diameter. The halo comes from the prior's longest extent (what export writes into the
    manifest as max_extent and the Model carries to the chunk job's halo), not from the mean diameter."""
    prior = ShapePrior(diameter_min=24, diameter_max=30, max_aspect=6.0, coverage=0.35)
    labels = pack_instances(np.random.default_rng(0), (512, 512), prior)
    flows, logits = labels_to_flows(labels), _logits(labels)
    boxes = [box for box in ndimage.find_objects(labels) if box is not None]
    lengths = [max(ys.stop - ys.start, xs.stop - xs.start) for ys, xs in boxes]
    crossing = sum(
        ys.start // 128 != (ys.stop - 1) // 128 or xs.start // 128 != (xs.stop - 1) // 128 for ys, xs in boxes
    )
    assert max(lengths) > 1.8 * prior.diameter_max and crossing > 50
    assert max(lengths) <= prior.max_extent()
    model = Model(Path("m.onnx"), "onnx", "fp32", diameter=(24.0, 30.0), max_extent=prior.max_extent())
    halo = chunk_halo(model.extent)
    assert halo == chunk_halo(prior.max_extent()) > chunk_halo(prior.diameter_max)
    whole = flows_to_labels(flows, logits)
    assert whole.max() > 100
    np.testing.assert_array_equal(_chunked(flows, logits, 128, DynamicsSettings(), halo), whole)


def test_halo_without_a_recorded_extent_is_conservative() -> None:
    """Old manifests have no max_extent: the halo assumes 2 x the largest mean diameter, more than the
    default prior's bound (1.72 x)."""
    old = Model(Path("m.onnx"), "onnx", "fp32", diameter=(10.0, 30.0))
    assert old.extent == 60.0 > ShapePrior(diameter_max=30.0).max_extent()
    new = Model(Path("m.onnx"), "onnx", "fp32", diameter=(10.0, 30.0), max_extent=51.6)
    assert chunk_halo(new.extent) == chunk_halo(51.6) < chunk_halo(old.extent)


def test_chunk_ids_are_global_seed_positions() -> None:
    labels = pack_instances(np.random.default_rng(6), (200, 300))
    flows, logits = labels_to_flows(labels), _logits(labels)
    full = (slice(0, 200), slice(0, 300))
    ids = segment_chunk(flows, logits, core=full, origin=(0, 0), image_shape=(200, 300))
    assert ids.dtype == np.uint64
    seeds = np.unique(ids[ids > 0]) - 1
    seed_y, seed_x = np.divmod(seeds, 300)
    own = ids[seed_y, seed_x]
    assert np.array_equal(own, seeds + 1), "every object's seed pixel belongs to the object"
    shifted = segment_chunk(
        flows[:, 50:, 100:],
        logits[50:, 100:],
        core=(slice(60, 150), slice(60, 200)),
        origin=(50, 100),
        image_shape=(200, 300),
    )
    inner = ids[110:200, 160:300]
    assert shifted.shape == inner.shape
    assert np.mean(shifted == inner) > 0.97  # only objects cut by the chunk edge may differ


def test_flow_error_check_drops_inconsistent_masks() -> None:
    labels = pack_instances(np.random.default_rng(7), (256, 256), ShapePrior(coverage=0.2))
    flows, logits = labels_to_flows(labels), _logits(labels)
    victim = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    inside = labels == victim
    # push the victim's flows downwards: trajectories still meet, but far from the mask's own flows
    biased = flows[:, inside] + np.array([[1.5], [0.0]], np.float32)
    flows[:, inside] = biased / np.linalg.norm(biased, axis=0)
    checked = flows_to_labels(flows, logits)
    assert (checked[inside] > 0).mean() < 0.1
    assert (checked[~inside] > 0).sum() > 0.95 * (labels[~inside] > 0).sum()
    for off in (0.0, None):
        unchecked = flows_to_labels(flows, logits, flow_threshold=off)
        assert (unchecked[inside] > 0).mean() > 0.9


def test_min_size_and_holes() -> None:
    yy, xx = np.mgrid[:80, :80]
    ring = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 20**2) & ((yy - 40) ** 2 + (xx - 40) ** 2 > 3**2)
    labels = ring.astype(np.int32)
    labels[5:9, 5:9] = 2  # 16 pixels: under min_size 20
    flows = labels_to_flows(labels)
    result = flows_to_labels(flows, _logits(labels), min_size=20)
    assert result.max() == 1
    assert result[40, 40] == 1, "the hole is filled"
    assert not result[5:9, 5:9].any()
    kept = flows_to_labels(flows, _logits(labels), min_size=5, flow_threshold=None)
    assert kept.max() == 2


@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (1, 1), (33, 17)])
def test_background_only(shape: tuple[int, int]) -> None:
    flows = np.zeros((2, *shape), np.float32)
    result = flows_to_labels(flows, np.full(shape, -3.0, np.float32))
    assert result.shape == shape and result.dtype == np.uint32 and not result.any()


def test_all_foreground_tile_is_defined() -> None:
    rng = np.random.default_rng(9)
    flows = rng.normal(0, 1, (2, 64, 64)).astype(np.float32)
    for f in (flows, np.zeros_like(flows)):
        result = flows_to_labels(f, np.full((64, 64), 4.0, np.float32))
        assert result.shape == (64, 64) and result.dtype == np.uint32
        assert result.max() == len(np.unique(result)) - (0 in result)


def test_nan_pixels_are_background() -> None:
    labels = pack_instances(np.random.default_rng(10), (128, 128))
    flows, logits = labels_to_flows(labels), _logits(labels)
    clean = flows_to_labels(flows, logits)
    flows[0, 10:20, 10:20] = np.nan
    logits[100:110, 100:110] = np.nan
    result = flows_to_labels(flows, logits)
    assert not result[10:20, 10:20].any() and not result[100:110, 100:110].any()
    assert abs(int(result.max()) - int(clean.max())) <= 4


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError):
        flows_to_labels(np.zeros((3, 8, 8), np.float32), np.zeros((8, 8), np.float32))
    with pytest.raises(UserError):
        flows_to_labels(np.zeros((2, 8, 8), np.float32), np.zeros((8, 9), np.float32))
    with pytest.raises(UserError, match="niter -1 must be a whole number from 1"):
        flows_to_labels(np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), niter=-1)
    with pytest.raises(UserError, match="unknown setting flow_treshold"):
        flows_to_labels(np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), flow_treshold=0.1)
    with pytest.raises(UserError):
        chunk_halo(0)
    with pytest.raises(UserError):
        segment_chunk(
            np.zeros((2, 8, 8), np.float32),
            np.zeros((8, 8), np.float32),
            core=(slice(0, 8), slice(0, 8)),
            origin=(4, 0),
            image_shape=(10, 10),
        )


def test_halo_grows_with_extent_and_is_capped_by_niter() -> None:
    assert chunk_halo(30, 200) == 30 + 30 + 16
    assert chunk_halo(30, 5) == 30 + 5 + 16
    assert chunk_halo(60) > chunk_halo(30)


def _cut_discs(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(labels cut by the window, unit flows of the WHOLE discs): two nuclei whose centres lie just
    outside the top and left edges, one inside; the network sees a cut nucleus this way, its flows
    pointing at a centre it cannot see."""
    yy, xx = np.mgrid[-20 : size + 20, -20 : size + 20]
    whole = np.zeros(yy.shape, np.int32)
    for k, (cy, cx) in enumerate([(-4, 40), (50, -5), (55, 60)], start=1):
        whole[(yy - cy) ** 2 + (xx - cx) ** 2 <= 14**2] = k
    flows = labels_to_flows(whole)[:, 20:-20, 20:-20]
    return whole[20:-20, 20:-20], np.ascontiguousarray(flows)


def test_nuclei_cut_by_the_image_edge_survive_the_flow_check() -> None:
    """The flow error of a cut nucleus is large by construction (its flows converge outside the
    image); the check exempts masks on the image's edge, and only there."""
    truth, flows = _cut_discs()
    labels = flows_to_labels(flows, _logits(truth), flow_threshold=0.4)
    assert labels.max() == 3
    assert match_instances(labels, truth, [0.9]).scores[0].f1 == 1.0
    # the same cut nucleus inside a larger image (its window side is not the image's edge) is checked
    big_flows = np.zeros((2, 96 + 40, 96 + 40), np.float32)
    big_flows[:, 40:, 40:] = flows
    big_truth = np.zeros((96 + 40, 96 + 40), np.int32)
    big_truth[40:, 40:] = truth
    inside = flows_to_labels(big_flows, _logits(big_truth), flow_threshold=0.4)
    assert inside.max() == 1
    assert flows_to_labels(flows, _logits(truth), exclude_on_edges=True).max() == 1


def test_chunked_equals_whole_with_nuclei_on_the_slide_edge() -> None:
    """Edge exemption and exclude_on_edges use the slide's edges, not a chunk's: same labels."""
    _, labels = make_slide(600, 500, seed=11)
    noisy = labels_to_flows(labels) + np.random.default_rng(2).normal(0, 0.35, (2, *labels.shape))
    flows, logits = noisy.astype(np.float32), _logits(labels)
    for settings in (DynamicsSettings(), DynamicsSettings(exclude_on_edges=True)):
        whole = flows_to_labels(flows, logits, exclude_on_edges=settings.exclude_on_edges)
        np.testing.assert_array_equal(_chunked(flows, logits, 160, settings), whole)


def test_keep_largest_piece_equals_scipy_pieces() -> None:
    """The run-based union-find keeps, per label, what scipy's 4-connected pieces give: the largest
    piece, the first in row-major order on a tie (ndimage.label numbers pieces in that order), on
    random label images with many pieces, touching labels and one-pixel rows and columns."""
    from cyclepose_deploy.runtime.dynamics.masks import keep_largest_piece

    four = ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(7)
    for case in range(120):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        count = int(rng.integers(1, 6))
        labels = rng.integers(0, count + 1, (h, w)).astype(np.int32)
        if case % 2:  # blocky labels: pieces of several runs
            labels = np.kron(labels, np.ones((3, 2), np.int32))[:h, :w].copy()
        expected = labels.copy()
        for k in range(1, count + 1):
            pieces, n = ndimage.label(labels == k, four)
            if n > 1:
                keep = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
                expected[(pieces > 0) & (pieces != keep)] = 0
        got = labels.copy()
        assert keep_largest_piece(got, count) == (not np.array_equal(expected, labels)), case
        np.testing.assert_array_equal(got, expected, err_msg=str(case))


def test_every_mask_is_one_connected_piece() -> None:
    """Stray pixels a mask holds apart from its body go to the background, in whole and chunked runs;
    4-connectivity, so no mask is two pieces joined at a corner (an invalid polygon)."""
    from cyclepose_deploy.runtime.dynamics.masks import keep_largest_piece

    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15] = 1
    labels[20:23, 20:23] = 1  # a stray piece of 1
    labels[15, 15] = 1  # touches the body at a corner only
    labels[25:35, 25:35] = 2
    labels[30:33, 2:5] = 2  # 9 px piece vs the 100 px body
    labels[0, 30:34] = 3
    labels[2, 30:34] = 3  # a tie: the first piece in row-major order stays
    assert keep_largest_piece(labels, 3)
    assert (labels == 1).sum() == 100 and (labels == 2).sum() == 100
    assert (labels[0, 30:34] == 3).all() and (labels[2] != 3).all()
    assert not keep_largest_piece(labels, 3)
    _, truth = make_slide(400, 400, seed=5)
    noisy = labels_to_flows(truth) + np.random.default_rng(0).normal(0, 0.6, (2, *truth.shape))
    out = flows_to_labels(noisy.astype(np.float32), _logits(truth))
    for k in range(1, int(out.max()) + 1):
        assert ndimage.label(out == k)[1] <= 1, k
