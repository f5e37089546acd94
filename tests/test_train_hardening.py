"""Bad checkpoints, poisoned training data and a diverging run (issue: hardening): one `error:` line,
exit 2, nothing written, and never a NaN checkpoint."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from cyclepose_deploy.cli import app  # noqa: E402
from cyclepose_deploy.errors import UserError  # noqa: E402
from cyclepose_deploy.nets.segmenter import Segmenter  # noqa: E402
from cyclepose_deploy.train.checkpoint import load_segmenter, save_checkpoint  # noqa: E402
from cyclepose_deploy.train.run import make_trainer, run  # noqa: E402

WIDTHS = [8, 16, 32, 64]
CONFIG = {"in_channels": 1, "widths": WIDTHS, "diameter": [10.0, 30.0], "tile": 64}


def _net_state() -> dict:
    return Segmenter(1, WIDTHS).state_dict()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["config"].pop("widths"), "config lacks widths"),
        (lambda d: d["config"].update(widths=[8, 10**6]), "widths"),
        (lambda d: d["config"].update(widths="8,16"), "widths"),
        (lambda d: d["config"].update(in_channels=7), "in_channels 7"),
        (lambda d: d.update(config=[1, 2]), "not a dict"),
        (lambda d: d.update(S={}), "holds no weights"),
        (lambda d: d.update(S={"a": 1}), "not a named tensor"),
        (lambda d: d["S"].pop(next(iter(d["S"]))), "do not fit the segmenter layout"),
        (lambda d: d["S"].update({k: torch.zeros(2, 2) for k in list(d["S"])[:1]}), "do not fit"),
        (lambda d: next(iter(d["S"].values())).fill_(float("nan")), "NaN or Inf"),
    ],
)
def test_malformed_checkpoints_are_refused(tmp_path: Path, edit: Callable, message: str) -> None:
    data = {"config": dict(CONFIG), "S": _net_state(), "step": 1}
    edit(data)
    path = save_checkpoint(tmp_path / "m.pt", data)
    with pytest.raises(UserError, match=message):
        load_segmenter(path)
    result = CliRunner().invoke(app, ["export", str(path), "-o", str(tmp_path / "exp"), "--no-engine"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.count("error:") == 1 and not (tmp_path / "exp").exists()


def _images(folder: Path, count: int = 2, dtype: type = np.uint16) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = (rng.random((96, 96)) * 1000).astype(np.float32)
        if dtype is np.complex64:
            image = image.astype(np.complex64)
        elif dtype is bool:
            image = image > 500
        else:
            image = image.astype(dtype)
        tifffile.imwrite(folder / f"im{i}.tif", image)
        paths.append(folder / f"im{i}.tif")
    return paths


@pytest.mark.parametrize("dtype", [np.complex64, bool])
def test_train_refuses_complex_and_bool_images(
    tmp_path: Path, dtype: type, tiny_train_config: Callable
) -> None:
    with pytest.raises(UserError, match="pixel type"):
        make_trainer(_images(tmp_path, dtype=dtype), tiny_train_config(), "cpu", None)


def test_nan_and_inf_pixels_never_reach_the_nets(tmp_path: Path, tiny_train_config: Callable) -> None:
    image = (np.random.default_rng(1).random((96, 96)) * 1000).astype(np.float32)
    image[10:20, 10:20] = np.nan
    image[50, 50] = np.inf
    image[60, 60] = -np.inf
    tifffile.imwrite(tmp_path / "bad.tif", image)
    trainer = make_trainer([tmp_path / "bad.tif"], tiny_train_config(rescale_images=False), "cpu", None)
    assert all(np.isfinite(im).all() for im in trainer.crops.images)
    losses = trainer.train_step()
    assert all(np.isfinite(v) for v in losses.values())


def test_diverging_run_stops_without_a_nan_checkpoint(
    tmp_path: Path, tiny_train_config: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(_images(tmp_path), tiny_train_config(steps=6), "cpu", None)
    step = trainer.train_step

    def poisoned() -> dict[str, float]:
        losses = step()
        if trainer.step >= 3:
            losses["mask"] = float("nan")
        return losses

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(UserError, match="diverged at step 3: mask not finite; no checkpoint was written"):
        run(trainer, tmp_path / "run.pt", checkpoint_every=0)
    assert not (tmp_path / "run.pt").exists()


def test_resume_from_a_checkpoint_without_optimiser_state(
    tmp_path: Path, tiny_train_config: Callable
) -> None:
    images = _images(tmp_path)
    trainer = make_trainer(images, tiny_train_config(steps=2), "cpu", None)
    run(trainer, tmp_path / "run.pt", checkpoint_every=0)
    data = torch.load(tmp_path / "run.pt", weights_only=True)
    del data["optimizers"]["gen"]
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(UserError, match="cannot be resumed"):
        make_trainer(images, tiny_train_config(steps=4), "cpu", tmp_path / "broken.pt")


def test_full_disk_while_saving_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path / "m.pt", {"config": CONFIG, "S": _net_state(), "step": 1})
    before = (tmp_path / "m.pt").read_bytes()

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="could not write checkpoint"):
        save_checkpoint(tmp_path / "m.pt", {"config": CONFIG, "S": _net_state(), "step": 2})
    monkeypatch.setattr(
        torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space"))
    )
    with pytest.raises(UserError, match="No space"):
        save_checkpoint(tmp_path / "m.pt", {"config": CONFIG, "S": _net_state(), "step": 2})
    assert (tmp_path / "m.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "--lr nan must be a number from 1e-07 to 1"),
        (["--lr-s", "inf"], "--lr-s inf must be a number from 1e-07 to 1"),
        (["--diameter", "10-inf"], "--diameter needs"),
        (["--diameter", "nan-30"], "--diameter needs"),
        (["--max-minutes", "-1"], "--max-minutes"),
        (["--tile", "100"], "multiple of 16"),
        (["--coverage", "nan"], "--coverage"),
        (["--refine-synthetic", "1"], "--refine-synthetic 1.0 must be in [0, 1)"),
        (["--refine-steps", "10", "--batch", "2", "--refine-synthetic", "0.9"], "leaves no real crop"),
    ],
)
def test_absurd_training_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    images = _images(tmp_path)
    result = CliRunner().invoke(
        app, ["train", "--images", str(images[0]), "--out", str(tmp_path / "r.pt"), *args]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output and not (tmp_path / "r.pt").exists()


def test_tiny_calibration_image_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", {"config": dict(CONFIG), "S": _net_state(), "step": 1})
    tifffile.imwrite(tmp_path / "tiny.tif", np.ones((8, 8), np.uint16))
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(path),
            "-o",
            str(tmp_path / "exp"),
            "--precision",
            "fp32,int8",
            "--no-engine",
            "--calib",
            str(tmp_path / "tiny.tif"),
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "smaller than" in result.output and not (tmp_path / "exp").exists()
