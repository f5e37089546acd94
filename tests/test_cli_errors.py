"""Bad input to `cyclepose synth` and `cyclepose eval`: one line naming the problem, exit code 2,
no traceback, and no output file left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cyclepose_deploy.cli import app

runner = CliRunner()


def assert_user_error(args: list[str], folder: Path, expect: str) -> None:
    before = set(folder.iterdir())
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expect in lines[0]
    assert "Traceback" not in result.output
    assert set(folder.iterdir()) == before, "an output file was left behind"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    labels = np.zeros((32, 32), np.uint16)
    labels[4:12, 4:12] = 1
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    tifffile.imwrite(tmp_path / "small.tif", labels[:16])
    tifffile.imwrite(tmp_path / "float.tif", labels.astype(np.float32))
    tifffile.imwrite(tmp_path / "negative.tif", -labels.astype(np.int32))
    (tmp_path / "text.tif").write_text("not a tiff")
    return tmp_path


@pytest.mark.parametrize(
    ("pred", "expect"),
    [
        ("missing.tif", "does not exist"),
        ("text.tif", "not a readable TIFF"),
        ("small.tif", "differs"),
        ("float.tif", "not integer labels"),
        ("negative.tif", "negative labels"),
    ],
)
def test_eval_bad_prediction(files: Path, pred: str, expect: str) -> None:
    args = ["eval", str(files / pred), str(files / "gt.tif"), "--json", str(files / "out.json")]
    assert_user_error(args, files, expect)


def test_eval_json_in_missing_folder(files: Path) -> None:
    args = ["eval", str(files / "gt.tif"), str(files / "gt.tif"), "--json", str(files / "no" / "r.json")]
    assert_user_error(args, files, "does not exist")


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--size", "0"], "too small"),
        (["--size", "-5"], "too small"),
        ([], "slide size is missing"),
        (["--height", "64"], "slide size is missing"),
        (["--size", "64", "--diameter", "30-10"], "--diameter"),
        (["--size", "64", "--diameter", "abc"], "--diameter"),
        (["--size", "64", "--pixel-size", "0"], "--pixel-size"),
        (["--size", "2000000"], "out of range"),
    ],
)
def test_synth_bad_arguments(tmp_path: Path, extra: list[str], expect: str) -> None:
    args = ["synth", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "gt.tif"), *extra]
    assert_user_error(args, tmp_path, expect)


def test_synth_bad_output_paths(tmp_path: Path) -> None:
    assert_user_error(["synth", str(tmp_path / "s.png"), "--size", "64"], tmp_path, ".tif")
    same = str(tmp_path / "s.tif")
    assert_user_error(["synth", same, "--size", "64", "--labels", same], tmp_path, "same file")
    missing = str(tmp_path / "nowhere" / "s.tif")
    assert_user_error(["synth", missing, "--size", "64"], tmp_path, "does not exist")
