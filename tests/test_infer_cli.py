"""`cyclepose infer` end to end on a small synthetic slide: every output it writes, and the artifact an
export folder gives. Its bad inputs are in test_bad_input.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile


def test_infer_writes_labels_objects_preview_prob(
    infer_data: dict[str, Path], tmp_path: Path, invoke: Callable, leftovers: Callable
) -> None:
    code, text = invoke(
        "infer",
        infer_data["slide"],
        "--model",
        infer_data["net"],
        "-o",
        tmp_path / "labels.tif",
        "--tile",
        128,
        "--chunk",
        160,
        "--objects",
        tmp_path / "obj.csv",
        "--preview",
        tmp_path / "p.png",
        "--prob",
        tmp_path / "prob.tif",
    )
    assert code == 0, text
    assert "objects in 320x288 px" in text and "MPix/s" in text
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        labels = tif.asarray()
        assert tif.is_bigtiff and tif.pages[0].is_tiled and 'PhysicalSizeX="0.65"' in tif.ome_metadata
    n = int(labels.max())
    assert labels.dtype == np.uint16 and n > 20  # as Cellpose saves masks; ImageJ reads it as labels
    assert np.array_equal(np.unique(labels), np.arange(n + 1))
    rows = (tmp_path / "obj.csv").read_text().splitlines()
    assert rows[0].startswith("label,centroid_y,centroid_x,area") and len(rows) == n + 1
    first = rows[1].split(",")
    assert int(first[3]) == int((labels == int(first[0])).sum())
    prob = tifffile.imread(tmp_path / "prob.tif")
    assert prob.dtype == np.uint8 and prob.shape == labels.shape and prob[labels > 0].mean() > 128
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(tmp_path) == ["labels.tif", "obj.csv", "p.png", "prob.tif"]


def test_export_folder_picks_verified_onnx_without_tensorrt(
    infer_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_export: Callable,
    invoke: Callable,
    error_line: Callable,
    leftovers: Callable,
) -> None:
    from cyclepose_deploy.runtime.model import artifacts

    monkeypatch.setattr(artifacts, "gpu_tensorrt_available", lambda: False)
    export = engine_export(tmp_path / "export", infer_data["net"])
    slide = infer_data["slide"]
    code, text = invoke("infer", slide, "--model", export, "-o", tmp_path / "l.tif", "--tile", 128)
    assert code == 0, text
    assert "model.onnx (onnx fp32, manifest)" in text
    line = error_line(*invoke("infer", slide, "--model", export / "model.engine", "-o", tmp_path / "e.tif"))
    assert "TensorRT engine" in line and "use the .onnx" in line, line
    assert leftovers(tmp_path) == ["export", "l.tif"]


def test_labels_file_is_uint16_until_the_labels_need_uint32() -> None:
    from cyclepose_deploy.runtime.run.passtwo import labels_dtype

    assert labels_dtype(0) == labels_dtype(65_535) == "uint16"
    assert labels_dtype(65_536) == "uint32"


def test_batch_passes_the_first_images_estimate_as_every_images_guess() -> None:
    """Issue 23: at default settings a batch estimates its first image once and gives that diameter to
    the other images as `diameter_guess`; one image, a given diameter or --diameter-fields: no guess;
    a first image that cannot be read gives no guess and does not end the batch."""
    from cyclepose_deploy.cli.batch import _acquisition_diameter
    from cyclepose_deploy.runtime.run.diameter import DiameterEstimate
    from cyclepose_deploy.runtime.run.options import InferOptions

    class Seg:
        def __init__(self, **options: object) -> None:
            self.options = InferOptions().updated(**options)
            self.asked: list[object] = []

        def estimate_diameter(self, image: object) -> DiameterEstimate:
            self.asked.append(image)
            if image == Path("bad.tif"):
                raise ValueError("not a TIFF")
            return DiameterEstimate(18.5, "network", 15.0, 40)

    images = [Path("a.tif"), Path("b.tif")]
    seg = Seg()
    assert _acquisition_diameter(seg, images, print) == {"diameter_guess": 18.5}
    assert seg.asked == [images[0]] and seg.options.scale.diameter_guess is None
    assert _acquisition_diameter(Seg(), images[:1], print) == {}
    notes: list[str] = []
    assert _acquisition_diameter(Seg(), [Path("bad.tif"), *images], notes.append) == {}
    assert notes and notes[0].startswith("warning: bad.tif")
    for given in ({"diameter": 20.0}, {"diameter_fields": 2}):
        seg = Seg(**given)
        assert _acquisition_diameter(seg, images, print) == {}
        assert seg.options.scale.diameter_guess is None


def test_console_script_exit_codes_and_output_survive_the_fast_exit(tmp_path: Path) -> None:
    """The console script ends with os._exit after the exit handlers (cli._leave): its status and
    every printed line must be those sys.exit would give."""
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = "from cyclepose_deploy.cli import main; main()"
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False
        )

    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("cyclepose-deploy ")
    bad = run("eval", str(tmp_path / "missing.tif"), str(tmp_path / "truth.tif"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:"), bad.stderr
    assert "Traceback" not in bad.stderr
