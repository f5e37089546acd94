"""Scale-out: chunks as dask.distributed tasks (bit-for-bit equal to the single-process run, also when a
worker is killed), runs that resume after Ctrl-C or kill -9 without redoing finished chunks, and empty
chunks that skip the network. The slide is conftest's scaleout_data; bad --scheduler values are in
test_bad_input.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("onnxruntime")
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

OPTS = ("--tile", "128", "--diameter", "20")  # a given diameter keeps each run short


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A LocalCluster of two worker processes, used by address like an existing cluster."""
    import logging

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as local:
        yield local.scheduler_address


@pytest.fixture
def run_cli(invoke: Callable) -> Callable[..., tuple[int, str]]:
    def run(data: dict[str, Path], out: Path, *extra: object) -> tuple[int, str]:
        """`cyclepose infer` on the data's slide and net with OPTS, labels to `out`."""
        return invoke("infer", data["slide"], "--model", data["net"], "-o", out, *OPTS, *extra)

    return run


@pytest.fixture
def infer(run_cli: Callable) -> Callable[..., dict]:
    def run(data: dict[str, Path], out: Path, *extra: object) -> dict:
        """run_cli with --overwrite that must succeed: its summary JSON."""
        json_path = out.with_suffix(".json")
        code, text = run_cli(data, out, *extra, "--summary-json", json_path, "--overwrite")
        assert code == 0, text
        return json.loads(json_path.read_text())

    return run


def interrupt_halfway(data: dict[str, Path], out: Path) -> None:
    """Ctrl-C once the network has run half of its tiles (chunk 128), through the Python API."""
    from cyclepose_deploy import Segmenter

    seen = [0]

    def interrupt(task: str, advance: int, total: int) -> None:
        if task == "network":
            seen[0] += advance
            if seen[0] >= total // 2:
                raise KeyboardInterrupt

    with Segmenter(data["net"], tile=128, chunk=128) as seg, pytest.raises(KeyboardInterrupt):
        seg.segment_file(data["slide"], out, diameter=20, progress=interrupt)


@pytest.mark.parametrize("chunk", [160, 256])
def test_cluster_labels_equal_single_process(
    scaleout_data: dict[str, Path], cluster: str, tmp_path: Path, chunk: int, infer: Callable
) -> None:
    single = infer(scaleout_data, tmp_path / "single.tif", "--chunk", chunk)
    dask = infer(scaleout_data, tmp_path / "dask.tif", "--chunk", chunk, "--scheduler", cluster)
    a, b = tifffile.imread(tmp_path / "single.tif"), tifffile.imread(tmp_path / "dask.tif")
    assert a.max() > 10
    assert np.array_equal(a, b)
    assert dask["workers"] == 2 and single["workers"] == 0
    # the empty bottom is skipped the same way by both
    assert single["chunks_skipped_empty"] == dask["chunks_skipped_empty"] > 0
    assert not (tmp_path / "dask.tif.run").exists()


def test_local_scheduler_option_starts_its_own_cluster(
    scaleout_data: dict[str, Path], tmp_path: Path, infer: Callable
) -> None:
    infer(scaleout_data, tmp_path / "single.tif", "--chunk", 256)
    summary = infer(
        scaleout_data, tmp_path / "local.tif", "--chunk", 256, "--scheduler", "local:2", "--threads", 1
    )
    assert summary["workers"] == 2
    assert np.array_equal(tifffile.imread(tmp_path / "single.tif"), tifffile.imread(tmp_path / "local.tif"))


def test_killed_worker_still_gives_identical_labels(
    scaleout_data: dict[str, Path], cluster: str, tmp_path: Path, infer: Callable
) -> None:
    from cyclepose_deploy import Segmenter

    infer(scaleout_data, tmp_path / "single.tif", "--chunk", 160)
    with distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
    killed: list[int] = []

    def progress(task: str, advance: int, total: int) -> None:
        if task == "chunks" and not killed:  # after the first chunk: others are queued or running
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    with Segmenter(scaleout_data["net"], tile=128, chunk=160) as seg:
        summary = seg.segment_file(
            scaleout_data["slide"], tmp_path / "dask.tif", diameter=20, scheduler=cluster, progress=progress
        )
    assert killed and summary.ran > 2
    with distributed.Client(cluster) as client:  # the nanny restarted the killed worker
        client.wait_for_workers(2, timeout=60)
        assert killed[0] not in client.run(os.getpid).values()
    assert np.array_equal(tifffile.imread(tmp_path / "single.tif"), tifffile.imread(tmp_path / "dask.tif"))


def _markers(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (folder / "done").glob("*.npy")}


def test_resume_after_ctrl_c_reruns_no_finished_chunk(
    scaleout_data: dict[str, Path], tmp_path: Path, infer: Callable, run_cli: Callable
) -> None:
    whole = infer(scaleout_data, tmp_path / "whole.tif", "--chunk", 128)
    out = tmp_path / "l.tif"
    interrupt_halfway(scaleout_data, out)
    run = tmp_path / "l.tif.run"
    before = _markers(run)
    assert 0 < len(before) < whole["chunks"] - whole["chunks_skipped_empty"]
    assert not out.exists()
    code, text = run_cli(scaleout_data, out, "--chunk", 128)
    assert code == 2 and "--resume" in text  # never silently thrown away
    resumed = infer(scaleout_data, out, "--chunk", 128, "--resume")
    assert resumed["chunks_resumed"] == len(before)
    assert resumed["chunks_run"] == whole["chunks_run"] - len(before)
    assert np.array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "whole.tif"))
    assert not run.exists()


def test_resume_after_kill_9(scaleout_data: dict[str, Path], tmp_path: Path, infer: Callable) -> None:
    data = {**scaleout_data, "slide": tmp_path / "big.tif"}  # 4x the area: the kill lands mid-run
    tifffile.imwrite(data["slide"], np.tile(tifffile.imread(scaleout_data["slide"]), (2, 2)), tile=(64, 64))
    whole = infer(data, tmp_path / "whole.tif", "--chunk", 128)
    out = tmp_path / "l.tif"
    command = [
        sys.executable,
        "-m",
        "cyclepose_deploy",
        "infer",
        str(data["slide"]),
        "--model",
        str(data["net"]),
        "-o",
        str(out),
        *OPTS,
        "--chunk",
        "128",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "l.tif.run"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_markers(run) if (run / "done").is_dir() else {}) < 3:
        if process.poll() is not None:
            break
        time.sleep(0.02)
    if process.poll() is not None:
        pytest.skip("the run ended before it could be killed (a much faster machine)")
    process.kill()
    process.wait()
    before = _markers(run)
    assert len(before) >= 3
    if len(before) == whole["chunks_run"]:
        pytest.skip("the run finished its chunks before the kill landed")
    resumed = infer(data, out, "--chunk", 128, "--resume", "--scheduler", "local:2", "--threads", 1)
    assert resumed["chunks_resumed"] == len(before)
    assert resumed["chunks_run"] == whole["chunks_run"] - len(before)
    assert np.array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "whole.tif"))


def test_resume_with_other_settings_is_refused(
    scaleout_data: dict[str, Path], tmp_path: Path, run_cli: Callable
) -> None:
    out = tmp_path / "l.tif"
    interrupt_halfway(scaleout_data, out)
    assert (tmp_path / "l.tif.run" / "done").is_dir()
    code, text = run_cli(scaleout_data, out, "--chunk", 128, "--flow-threshold", "0.6", "--resume")
    assert code == 2
    assert "options differ" in text.replace("\n", " ")


def test_empty_chunks_skip_the_network_and_change_nothing(
    scaleout_data: dict[str, Path], tmp_path: Path, infer: Callable
) -> None:
    skip = infer(scaleout_data, tmp_path / "skip.tif", "--chunk", 128)
    full = infer(scaleout_data, tmp_path / "full.tif", "--chunk", 128, "--no-skip-empty")
    assert full["chunks_skipped_empty"] == 0 and skip["chunks_skipped_empty"] >= 5
    assert np.array_equal(tifffile.imread(tmp_path / "skip.tif"), tifffile.imread(tmp_path / "full.tif"))


def test_noise_only_slide_runs_no_network(
    scaleout_data: dict[str, Path], tmp_path: Path, invoke: Callable
) -> None:
    noise = np.random.default_rng(3).normal(200, 3, (512, 512)).clip(0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "noise.tif", noise)
    code, text = invoke(
        "infer",
        tmp_path / "noise.tif",
        "--model",
        scaleout_data["net"],
        "-o",
        tmp_path / "l.tif",
        *OPTS,
        "--chunk",
        128,
        "--summary-json",
        tmp_path / "s.json",
    )
    assert code == 0, text
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["objects"] == 0 and summary["tiles_run"] == 0
    assert summary["chunks_skipped_empty"] == summary["chunks"] == 16


def test_chunks_to_run_follow_tissue_blocks_into_neighbour_halos() -> None:
    from cyclepose_deploy.runtime.run.tissue import chunks_to_run
    from cyclepose_deploy.runtime.tiling.chunks import chunk_windows

    chunks = chunk_windows((400, 400), 100, 20)  # 4 x 4 cores of 100 px, halo 20
    blocks = [np.zeros((0, 4), np.int64) for _ in chunks]
    blocks[5] = np.array([[100, 110, 100, 110]])  # tissue in the top-left corner of core 5 only
    run = chunks_to_run(chunks, blocks)
    assert {i for i, r in enumerate(run) if r} == {0, 1, 4, 5}  # the halos that reach that corner
    assert chunks_to_run(chunks, [np.zeros((0, 4), np.int64)] * 16) == [False] * 16


def test_tissue_blocks_find_one_nucleus_and_not_noise() -> None:
    from cyclepose_deploy.runtime.run.tissue import tissue_blocks
    from cyclepose_deploy.runtime.source.array import ArraySource
    from cyclepose_deploy.runtime.source.normalize import Normalization
    from cyclepose_deploy.runtime.tiling.chunks import Chunk

    rng = np.random.default_rng(0)
    image = rng.normal(200, 5, (600, 600)).astype(np.float32)
    norm = Normalization.from_sample(image)  # noise only: the floor keeps it dark
    chunk = Chunk(0, (0, 600, 0, 600), (0, 600, 0, 600))
    assert tissue_blocks(ArraySource(image), norm, chunk, 1.0).shape == (0, 4)
    yy, xx = np.mgrid[0:600, 0:600]
    image[(yy - 400) ** 2 + (xx - 300) ** 2 < 10**2] += 60  # one dim nucleus, 12 noise sigmas
    found = tissue_blocks(ArraySource(image), norm, chunk, 1.0)
    assert found.tolist() == [[256, 512, 256, 512]]


def test_run_folder_of_a_live_run_is_not_touched(
    scaleout_data: dict[str, Path], tmp_path: Path, run_cli: Callable
) -> None:
    from cyclepose_deploy.atomic import owner_tag

    run = tmp_path / "l.tif.run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    live = owner_tag().replace(str(os.getpid()), str(os.getppid()), 1)  # a live process of this host
    (run / "owner.json").write_text(json.dumps({"token": "x", "owner": live}))
    code, text = run_cli(scaleout_data, tmp_path / "l.tif", "--resume")
    assert code == 2 and "another run" in text.replace("\n", " ")
    assert (run / "owner.json").exists()


def test_a_task_of_a_gone_driver_writes_nothing(scaleout_data: dict[str, Path], tmp_path: Path) -> None:
    from dataclasses import replace

    from cyclepose_deploy.runtime.dynamics import DynamicsSettings
    from cyclepose_deploy.runtime.model.artifacts import resolve_model
    from cyclepose_deploy.runtime.run.distributed import chunk_task
    from cyclepose_deploy.runtime.run.scratch import ScratchStore
    from cyclepose_deploy.runtime.run.worker import ChunkJob, SlideRef
    from cyclepose_deploy.runtime.source.normalize import Normalization
    from cyclepose_deploy.runtime.source.slide import SlideOptions
    from cyclepose_deploy.runtime.tiling.chunks import chunk_windows
    from cyclepose_deploy.runtime.tiling.options import Tiling

    shape = (640, 576)
    store = ScratchStore(tmp_path, shape, False, 256)
    (tmp_path / "owner.json").write_text(json.dumps({"token": "new-driver", "owner": "1@x"}))
    chunk = chunk_windows(shape, 256, 64)[0]
    job = ChunkJob(
        Tiling(tile=128, chunk=256),
        DynamicsSettings(),
        resolve_model(scaleout_data["net"]),
        Normalization(100.0, 2000.0),
        shape,
        slide=SlideRef(str(scaleout_data["slide"]), SlideOptions()),
        folder=str(tmp_path),
        token="old-driver",
        threads=1,
    )
    assert chunk_task(job, chunk)[0] == 0
    assert store.done() == set()  # the old driver's task computed, but did not write
    chunk_task(replace(job, token="new-driver"), chunk)
    assert store.done() == {0}


def test_ctrl_c_in_the_cli_keeps_the_run_folder_and_resume_finishes_it(
    scaleout_data: dict[str, Path], tmp_path: Path, infer: Callable
) -> None:
    """SIGINT (Ctrl-C) to a running `cyclepose infer` once chunks have finished: exit 130, no labels
    file, the run folder kept with its finished chunks; --resume finishes with the labels of an
    uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    data = {**scaleout_data, "slide": tmp_path / "big.tif"}  # 4x the area: the signal lands mid-run
    tifffile.imwrite(data["slide"], np.tile(tifffile.imread(scaleout_data["slide"]), (2, 2)), tile=(64, 64))
    whole = infer(data, tmp_path / "whole.tif", "--chunk", 128)
    out = tmp_path / "l.tif"
    args = [sys.executable, "-m", "cyclepose_deploy", "infer", data["slide"], "--model", data["net"]]
    args += ["-o", out, *OPTS, "--chunk", 128, "--threads", 1]
    done = tmp_path / "l.tif.run" / "done"
    for _attempt in range(3):  # a run that outruns the signal (a fast, quiet machine) is run again
        process = subprocess.Popen(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Python installs its Ctrl-C handler only where SIGINT is not inherited as ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        end = time.monotonic() + 120
        while time.monotonic() < end and process.poll() is None and len(list(done.glob("*.npy"))) < 2:
            time.sleep(0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            break
        out.unlink()
    else:
        pytest.skip("three runs ended before the interrupt could land (machine too fast)")
    assert process.returncode == 130, output
    assert "Traceback" not in output and "interrupted" in output
    kept = _markers(tmp_path / "l.tif.run")
    assert 2 <= len(kept) < whole["chunks"] and not out.exists()
    resumed = infer(data, out, "--chunk", 128, "--resume")
    assert resumed["chunks_resumed"] >= 2
    assert np.array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "whole.tif"))


@pytest.mark.parametrize("tamper", ["fingerprint", "marker", "store"])
def test_a_run_folder_tampered_with_between_kill_and_resume_is_refused(
    scaleout_data: dict[str, Path], tmp_path: Path, run_cli: Callable, error_line: Callable, tamper: str
) -> None:
    """Whatever was changed in LABELS.run after the interruption (the recorded settings, a chunk's
    marker, the store), --resume refuses in one line naming --overwrite, and writes no labels."""
    import shutil

    out = tmp_path / "l.tif"
    interrupt_halfway(scaleout_data, out)
    run = tmp_path / "l.tif.run"
    if tamper == "fingerprint":
        data = json.loads((run / "run.json").read_text())
        data["scale"] = 0.5
        (run / "run.json").write_text(json.dumps(data))
    elif tamper == "marker":
        marker = sorted((run / "done").glob("*.npy"))[0]
        marker.write_bytes(b"not an array")
    else:
        shutil.rmtree(run / "ids.zarr")
    line = error_line(*run_cli(scaleout_data, out, "--chunk", 128, "--resume"))
    assert "--overwrite" in line
    assert not out.exists()
