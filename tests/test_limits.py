"""One declared range per value (cyclepose_deploy.limits), the same wherever a value comes from: what
`train` accepts, export accepts from its checkpoint, and what export writes, the runtime accepts from its
manifest. Checked over the option space with hypothesis; and the range messages name the setting as the
caller knows it."""

from __future__ import annotations

import dataclasses
import math

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cyclepose_deploy import limits  # noqa: E402
from cyclepose_deploy.errors import OptionError  # noqa: E402


def values(bound: limits.Range) -> st.SearchStrategy:
    """Every value the range accepts (integers by its multiple)."""
    if bound.integer:
        low = math.ceil(bound.low / bound.multiple)
        return st.integers(low, int(bound.high) // bound.multiple).map(lambda k: k * bound.multiple)
    return st.floats(bound.low, bound.high, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(values(limits.TRAIN["width"]), min_size=2, max_size=5),
    diameter=st.tuples(values(limits.TRAIN["diameter"]), values(limits.TRAIN["diameter"])).map(sorted),
    tile=values(limits.TRAIN["tile"]).filter(lambda t: t <= 384),
    batch=st.integers(1, 16),
)
def test_what_train_accepts_export_and_the_runtime_accept(
    widths: list[int], diameter: list[float], tile: int, batch: int
) -> None:
    pytest.importorskip("torch")
    from cyclepose_deploy.export.pipeline import max_extent
    from cyclepose_deploy.runtime.model.manifest import SCHEMA, manifest_from_dict
    from cyclepose_deploy.train.checkpoint import check_config
    from cyclepose_deploy.train.loop import TrainConfig

    try:
        config = TrainConfig(widths=widths, diameter=list(diameter), tile=tile, batch=batch, precision="fp32")
    except OptionError as exc:  # train refuses it itself (e.g. too many weights): nothing is written
        assert exc.option in ("widths", "tile", "batch", "diameter"), exc
        return
    saved = {**dataclasses.asdict(config), "diam_mean": config.diam_mean}
    check_config(saved, "a checkpoint train wrote")  # what export checks before building S
    manifest = {  # the numbers export writes (export/pipeline.make_manifest)
        "schema": SCHEMA,
        "channels": config.in_channels,
        "diameter": [float(d) for d in config.diameter],
        "normalization": dict(config.normalization),
        "source_sha256": "0" * 64,
        "artifacts": [{"file": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": "0" * 64}],
        "max_extent": round(max_extent(saved, config.diameter), 2),
    }
    manifest_from_dict(manifest)  # what the runtime reads


@settings(max_examples=60, deadline=None)
@given(tile=values(limits.INFER["tile"]), overlap=st.integers(0, 64), batch=values(limits.INFER["batch"]))
def test_infer_options_hold_their_own_invariants(tile: int, overlap: int, batch: int) -> None:
    """Any accepted tiling is one the grid, the chunk layout and the memory bound can run."""
    from cyclepose_deploy.runtime.run.options import InferOptions

    try:
        options = InferOptions.of(tile=tile, overlap=overlap, batch=batch, chunk=max(tile, 64))
    except OptionError as exc:
        assert exc.option in ("overlap", "batch"), exc
        return
    tiling = options.tiling
    assert tiling.overlap <= tiling.tile // 2 and tiling.chunk >= tiling.tile
    assert tiling.batch * tiling.tile**2 <= limits.MAX_BATCH_PIXELS


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 10_000.0, "17", True, None])
def test_a_value_outside_its_range_names_the_setting_and_the_range(value: object) -> None:
    with pytest.raises(OptionError) as caught:
        limits.INFER["diameter"].check("diameter", value)
    assert caught.value.option == "diameter"
    assert str(caught.value).startswith("diameter ") and "from 1 to 2000 px" in str(caught.value)
    assert caught.value.render(lambda name: "--" + name).startswith("--diameter ")


def test_thread_bounds_follow_the_machine() -> None:
    bound = limits.threads()
    assert bound.high == limits.THREADS_PER_CORE * limits.usable_cores()
    with pytest.raises(OptionError, match="from 1 to"):
        bound.check("threads", bound.high + 1)
