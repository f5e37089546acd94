"""benchmarks/run_suite.py: machine details, peak-memory measurement, Markdown, and a tiny network run."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import machine  # noqa: E402
import run_suite  # noqa: E402
import suite_parts  # noqa: E402
from suite_report import markdown  # noqa: E402


def test_machine_info_records_what_the_numbers_depend_on() -> None:
    info = machine.machine_info()
    for key in ("cpu", "usable_cores", "memory_gib", "load_average", "libraries", "gpus"):
        assert key in info
    assert info["libraries"]["numpy"] == np.__version__


@pytest.mark.parametrize(
    ("info", "name"),
    [
        ({"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}, "h100-80gb-hbm3"),
        (
            {"gpus": [], "usable_cores": 2, "cpu": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"},
            "cpu-2c-intel-xeon-gold-6338",
        ),
    ],
)
def test_machine_name_is_file_safe(info: dict, name: str) -> None:
    assert machine.machine_name(info) == name


def test_peak_rss_is_the_child_s_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that holds 200 MB must report at least that, and the wall time it took."""
    hog = [sys.executable, "-c", "import numpy, time; a = numpy.ones(25_000_000); time.sleep(0.2)"]
    monkeypatch.setattr(suite_parts, "infer_command", lambda *a: hog)
    row = suite_parts.measure_infer(tmp_path / "s.tif", tmp_path, tmp_path / "o.tif", threads=None)
    assert 200 <= row["peak_rss_mib"] < 2000 and row["seconds"] >= 0.2
    monkeypatch.setattr(
        suite_parts, "infer_command", lambda *a: [sys.executable, "-c", "raise SystemExit('no')"]
    )
    assert (
        suite_parts.measure_infer(tmp_path / "s.tif", tmp_path, tmp_path / "o.tif", None)["skipped"] == "no"
    )


def test_write_slide_is_a_tiled_uint16_bigtiff(tmp_path: Path) -> None:
    import tifffile

    path = suite_parts.write_slide(tmp_path / "s.tif", 320, channels=2)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.dtype == np.uint16
        assert tif.series[0].shape == (2, 320, 320)


def fake_result() -> dict:
    stats = {"median": 2.0, "p99": 3.0}
    row = {
        "artifact": "/x/model.int8.onnx",
        "backend": "ort:model.int8.onnx",
        "device": "cpu",
        "precision": "int8",
    }
    row |= {
        "batch": 8,
        "latency_tile_ms": stats,
        "throughput_tiles_per_s": 40.0,
        "throughput_mpix_per_s": 2.6,
    }
    torch = dict(row, artifact="torch:S", backend="torch", precision="fp32", throughput_tiles_per_s=10.0)
    return {
        "created": "now",
        "machine": {"cpu": "TestCPU", "usable_cores": 2, "memory_gib": 8, "gpus": [], "load_average": [0.5]},
        "settings": {"mode": "quick", "tile": 256, "batches": "8", "iters": 5, "warmup": 2, "threads": None},
        "network": [torch, row, {"artifact": "model.engine on tensorrt", "skipped": "no GPU"}],
        "accuracy": [{"file": "model.int8.onnx", "f1_vs_fp32": 0.9912}],
        "slides": [{"side": 2048, "mpix": 4.19, "seconds": 10.0, "mpix_per_s": 0.419, "peak_rss_mib": 900}],
        "dynamics": [
            {"side": 1024, "objects_true": 899, "round_trip_ap_at_0.9": 0.97, "chunked_equals_whole": True}
            | {"seconds": 0.5, "mpix_per_s": 2.1, "mpix_per_cpu_s": 1.9}
        ],
        "suite_seconds": 12.0,
    }


def test_markdown_puts_speedup_and_accuracy_side_by_side() -> None:
    text = markdown(fake_result())
    int8_line = next(line for line in text.splitlines() if line.startswith("| model.int8.onnx"))
    assert "| 4.00x |" in int8_line and "0.9912" in int8_line  # 40 vs 10 tiles/s at the same batch
    assert "skipped: no GPU" in text and "| 2048x2048 | 4.2 | 10.0 | 0.419 | 900 | - |" in text
    assert "899" in text and "run_suite.py --export EXPORT_DIR --quick" in text
    assert "busy" not in text


def test_markdown_warns_when_the_machine_was_busy() -> None:
    result = fake_result()
    result["machine"]["load_average"] = [3.5]
    assert "machine was busy (load 3.5" in markdown(result)


@pytest.mark.slow
def test_suite_network_part_on_a_tiny_export(tmp_path: Path, tiny_export: Callable) -> None:
    """Torch eager (untrained S) and both ONNX artifacts, each in its own process, side by side."""
    pytest.importorskip("torch")
    export = tiny_export(tmp_path / "export")
    out = tmp_path / "results"
    args = ["--export", str(export), "--quick", "--parts", "network", "--tile", "32", "--batch", "1"]
    args += ["--iters", "2", "--threads", "1", "--out-dir", str(out), "--work", str(tmp_path / "work")]
    assert run_suite.main([*args, "--providers", "cpu"]) == 0
    (result_file,) = out.glob("*.json")
    result = json.loads(result_file.read_text())
    assert [r.get("precision") for r in result["network"]] == ["fp32", "fp32", "int8"], result["network"]
    assert result["network"][0]["backend"] == "torch"
    assert all(r["runner_info"]["threads"] == 1 for r in result["network"])
    assert "vs torch" in result_file.with_suffix(".md").read_text()
