"""`cyclepose bench`: nearest-rank statistics on hand-computed samples, the timing loop, the JSON
schema, and the CLI on a tiny ONNX model built with onnx.helper (no torch)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime import benchmark
from cyclepose_deploy.runtime.backends.base import Runner, ShapeLimits
from cyclepose_deploy.runtime.benchmark import LatencyStats, Timings, nearest_rank
from cyclepose_deploy.synth.tiles import synthetic_tiles


# statistics --------------------------------------------------------------------------------------
def test_nearest_rank_matches_hand_computed_values() -> None:
    samples = [35.0, 20.0, 15.0, 50.0, 40.0]  # sorted: 15 20 35 40 50 (order must not matter)
    expected = {0: 15, 5: 15, 30: 20, 40: 20, 50: 35, 80: 40, 81: 50, 100: 50}
    assert {p: nearest_rank(samples, p) for p in expected} == expected


def test_nearest_rank_is_exact_at_rank_boundaries() -> None:
    hundred = [float(v) for v in range(1, 101)]
    assert [nearest_rank(hundred, p) for p in (50, 90, 95, 99, 99.5)] == [50, 90, 95, 99, 100]
    ten = [float(v) for v in range(10, 0, -1)]
    # rank = ceil(p * 10 / 100): p90 -> 9th, p95 -> 10th, p99 -> 10th, median -> 5th (lower middle)
    assert [nearest_rank(ten, p) for p in (50, 90, 95, 99)] == [5, 9, 10, 10]


def test_nearest_rank_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        nearest_rank([], 50)
    with pytest.raises(ValueError):
        nearest_rank([1.0], 101)


def test_latency_stats_in_ms_and_per_tile() -> None:
    seconds = [0.010, 0.030, 0.020, 0.040]
    stats = LatencyStats.from_seconds(seconds)
    assert (stats.count, stats.min, stats.median, stats.p90, stats.max) == (4, 10.0, 20.0, 40.0, 40.0)
    assert stats.mean == pytest.approx(25.0)
    per_tile = LatencyStats.from_seconds(seconds, divide_by=8)
    assert per_tile.median == pytest.approx(2.5) and per_tile.max == pytest.approx(5.0)


def test_throughput_counts_all_tiles_over_all_timed_seconds() -> None:
    summary = benchmark.summarize(Timings(wall=[0.5, 1.5], cpu=[1.0, 2.0]), batch=4, tile=256)
    assert summary["cpu_seconds_per_wall_second"] == pytest.approx(1.5)
    assert summary["throughput_tiles_per_s"] == pytest.approx(4.0)  # 8 tiles in 2 s
    assert summary["throughput_mpix_per_s"] == pytest.approx(4.0 * 256 * 256 / 1e6)


# timing loop -------------------------------------------------------------------------------------
class FakeRunner(Runner):
    """Counts calls and reports GPU-style phases, like the native TensorRT runner."""

    def __init__(self) -> None:
        super().__init__("fake", device="gpu", precision="fp16", channels=2)
        self.calls = 0

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.last_timings = {"h2d": 0.001, "compute": 0.002 * self.calls, "d2h": 0.0005}
        return np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)

    def info(self) -> dict[str, object]:
        return {"threads": 3}


def test_time_runner_warms_up_then_records_wall_and_phases() -> None:
    with FakeRunner() as runner:
        runner.calls = 0  # activation ran one zero-tile probe
        timings = benchmark.time_runner(runner, np.zeros((1, 2, 16, 16), np.float32), iters=5, warmup=3)
    assert runner.calls == 8 and len(timings.wall) == 5
    assert timings.phases["compute"] == pytest.approx([0.008, 0.010, 0.012, 0.014, 0.016])
    assert set(timings.phases) == {"h2d", "compute", "d2h"}


def test_bench_runner_uses_runner_metadata_and_reports_phases() -> None:
    shapes: list[tuple[int, int, int]] = []

    def make_tiles(batch: int, channels: int, tile: int) -> np.ndarray:
        shapes.append((batch, channels, tile))
        return np.zeros((batch, channels, tile, tile), np.float32)

    with FakeRunner() as runner:
        runner.calls = 0  # activation ran one zero-tile probe
        results = benchmark.bench_runner(
            runner, artifact="x", tile=32, batches=[1, 2], iters=3, warmup=0, make_tiles=make_tiles
        )
    assert shapes == [(1, 2, 32), (2, 2, 32)]
    assert [r.batch for r in results] == [1, 2] and all(r.channels == 2 for r in results)
    assert (results[0].device, results[0].precision, results[0].runner_info) == (
        "gpu",
        "fp16",
        {"threads": 3},
    )
    assert results[0].phases_ms["compute"].max == pytest.approx(6.0)


def test_bench_refuses_shapes_outside_the_engine_profile_before_timing() -> None:
    runner = FakeRunner()
    runner.shape_limits = ShapeLimits(1, 2, 4, (32, 32), (64, 64), (128, 128))
    with runner, pytest.raises(UserError, match=r"batch 8 is outside .*\[1, 4\]"):
        benchmark.bench_runner(
            runner, artifact="x", tile=32, batches=[8], iters=1, warmup=0, make_tiles=synthetic_tiles
        )
    assert runner.calls == 1  # only the activation probe (batch 1, the profile's opt tile)


def test_synthetic_tiles_are_normalised_images_not_constants() -> None:
    tiles = synthetic_tiles(2, 2, 64, seed=1)
    assert tiles.shape == (2, 2, 64, 64) and tiles.dtype == np.float32
    low, high = np.percentile(tiles[0, 0], [1, 99])
    assert low == pytest.approx(0.0, abs=0.05) and high == pytest.approx(1.0, abs=0.05)
    assert not np.array_equal(tiles[0], tiles[1])
    np.testing.assert_array_equal(synthetic_tiles(1, 2, 64, seed=1)[0], tiles[0])  # same tile at any batch


# CLI ---------------------------------------------------------------------------------------------
def test_cli_prints_table_and_writes_json_with_percentiles(
    tmp_path: Path, tiny_onnx: Callable, invoke_streams: Callable
) -> None:
    model = tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "b.json"
    code, stdout, stderr = invoke_streams(
        "bench",
        "--model",
        str(model),
        "--batch",
        "1,2",
        "--tile",
        "32",
        "--iters",
        "7",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
    )
    assert code == 0, stderr
    assert "model.onnx" in stdout and "p99" in stdout
    report = json.loads(out.read_text())
    assert report["schema"] == "cyclepose-bench/1" and "cpu" in report["host"]
    assert report["settings"]["threads"] == 1
    rows = report["results"]
    assert [(r["batch"], r["precision"], r["device"]) for r in rows] == [
        (1, "fp32", "cpu"),
        (2, "fp32", "cpu"),
    ]
    for row in rows:
        for key in ("latency_batch_ms", "latency_tile_ms"):
            s = row[key]
            assert s["count"] == 7
            assert s["min"] <= s["median"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        assert row["throughput_mpix_per_s"] == pytest.approx(row["throughput_tiles_per_s"] * 32 * 32 / 1e6)
        assert row["runner_info"]["session_options"]["intra_op_num_threads"] == 1
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_benches_every_verified_artifact_of_an_export(
    tmp_path: Path, tiny_export: Callable, invoke_streams: Callable
) -> None:
    folder = tiny_export(tmp_path / "export")
    out = tmp_path / "b.json"
    code, _, stderr = invoke_streams(  # --engine: the old name of --model, kept as an alias
        "bench", "--engine", str(folder), "--batch", "1", "--tile", "16", "--iters", "2", "--json", str(out)
    )
    assert code == 0, stderr
    assert [r["precision"] for r in json.loads(out.read_text())["results"]] == ["fp32", "int8"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{tmp}/missing.onnx"], "not found"),
        (["--model", "{model}", "--batch", "1,x"], "--batch"),
        (["--model", "{model}", "--batch", "0"], "--batch"),
        (["--model", "{model}", "--tile", "100", "--iters", "1"], "--tile"),
        (["--model", "{model}", "--json", "{tmp}/no/such/dir/b.json"], "does not exist"),
        (["--model", "{tmp}/notes.txt"], ".onnx / .engine / .plan / .trt"),
        (["--model", "{tampered}"], "sha256"),
        (["--model", "{tmp}/lone.engine"], "manifest"),
        (["--model", "{tmp}/lone.trt"], "manifest"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path,
    tiny_onnx: Callable,
    tiny_export: Callable,
    args: list[str],
    message: str,
    invoke_streams: Callable,
    error_line: Callable,
) -> None:
    model = tiny_onnx(tmp_path / "model.onnx")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "lone.engine").write_bytes(b"not an engine")
    (tmp_path / "lone.trt").write_bytes(b"not an engine")
    folder = tiny_export(tmp_path / "export")
    (folder / "model.int8.onnx").write_bytes(b"tampered")
    subs = {"{tmp}": str(tmp_path), "{model}": str(model), "{tampered}": str(folder)}
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
    line = error_line(*invoke_streams("bench", *args))  # stderr is that one line and nothing else
    assert message in line, line
