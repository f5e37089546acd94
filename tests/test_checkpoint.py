"""Checkpoints round-trip; Cellpose 3 state dicts load; anything else is a one-line UserError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.nets.segmenter import Segmenter
from cyclepose_deploy.train.checkpoint import load_checkpoint, load_segmenter, save_checkpoint

WIDTHS = [8, 16, 32, 64]
CONFIG = {
    "in_channels": 1,
    "widths": WIDTHS,
    "diameter": [10.0, 30.0],
    "normalization": {"lower": 1.0, "upper": 99.0},
    "tile": 64,
}


def _perturbed(net: Segmenter) -> Segmenter:
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:  # not diam_mean / diam_labels
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def _same_output(a: torch.nn.Module, b: torch.nn.Module, channels: int) -> bool:
    x = torch.rand(1, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = _perturbed(Segmenter(1, WIDTHS))
    path = save_checkpoint(tmp_path / "m.pt", {"config": CONFIG, "S": net.state_dict(), "step": 3})
    loaded, config = load_segmenter(path)
    assert config == CONFIG and not loaded.training
    assert _same_output(net, loaded, 1)
    assert load_checkpoint(path)["step"] == 3
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("prefix", ["", "module."])
def test_cellpose3_state_dict_loads(tmp_path: Path, prefix: str) -> None:
    net = _perturbed(Segmenter(2, WIDTHS, diam_mean=17.0))
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, tmp_path / "cp3")
    loaded, config = load_segmenter(tmp_path / "cp3")
    assert config["in_channels"] == 2 and config["widths"] == WIDTHS
    assert config["diameter"] == [17.0, 17.0] and config["normalization"] == {"lower": 1.0, "upper": 99.0}
    assert _same_output(net, loaded, 2)


class _Code:
    pass


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = save_checkpoint(tmp_path / "good.pt", {"config": CONFIG, "S": Segmenter(1, WIDTHS).state_dict()})
    files = {
        "pickle with code": tmp_path / "code.pt",
        "truncated": tmp_path / "trunc.pt",
        "text": tmp_path / "text.pt",
        "other model": tmp_path / "linear.pt",
        "missing": tmp_path / "missing.pt",
        "wrong version": tmp_path / "v9.pt",
        "bad weights": tmp_path / "shapes.pt",
    }
    torch.save({"x": _Code()}, files["pickle with code"])
    files["truncated"].write_bytes(good.read_bytes()[:2000])
    files["text"].write_text("not a checkpoint")
    torch.save(torch.nn.Linear(3, 3).state_dict(), files["other model"])
    torch.save({"format": "cyclepose-checkpoint", "version": 9}, files["wrong version"])
    wrong = {**CONFIG, "widths": [8, 16, 32, 128]}
    save_checkpoint(files["bad weights"], {"config": wrong, "S": Segmenter(1, WIDTHS).state_dict()})
    return files


def test_bad_files_raise_user_error(tmp_path: Path) -> None:
    for what, path in _bad_files(tmp_path).items():
        with pytest.raises(UserError) as info:
            load_segmenter(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message, what
