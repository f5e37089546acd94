"""Training on CPU with tiny nets: finite losses, the mask cycle learns, resume is exact, the CLI works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from cyclepose_deploy.cli import app
from cyclepose_deploy.train.checkpoint import load_checkpoint, load_segmenter
from cyclepose_deploy.train.data import dihedral_flows, mask_targets
from cyclepose_deploy.train.loop import TrainConfig, Trainer
from cyclepose_deploy.train.run import image_crops, make_trainer, run


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Blurred bright discs on a dark noisy background: a stand-in for a nuclei image."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:192, :192]
    image = rng.normal(100, 5, (192, 192))
    for cy, cx in rng.uniform(10, 182, (40, 2)):
        image += 800 * (((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(25, 80))
    path = tmp_path_factory.mktemp("img") / "nuclei.tif"
    tifffile.imwrite(path, np.clip(image, 0, 65535).astype(np.uint16))
    return path


def _trainer(
    make_config: Callable[..., TrainConfig], image_path: Path, steps: int, **extra: object
) -> Trainer:
    torch.set_num_threads(1)
    config = make_config(steps=steps, **extra)
    return Trainer(config, image_crops([image_path], config))


def test_dihedral_flows_turn_vectors_with_pixels() -> None:
    labels = np.zeros((32, 32), np.uint32)
    labels[5:14, 7:26] = 1
    target = mask_targets(labels)
    rng = np.random.default_rng(1)
    for _ in range(8):
        moved = dihedral_flows(rng, target)
        recomputed = mask_targets((moved[2] > 0.5).astype(np.uint32))
        assert np.array_equal(moved[2], recomputed[2])
        # equal up to the discrete centre choice, which is not rotation-exact
        cosine = (moved[:2] * recomputed[:2]).sum() / (recomputed[:2] ** 2).sum()
        assert cosine > 0.97 and np.abs(moved - recomputed).mean() < 0.02


def test_losses_finite_and_mask_cycle_decreases(image_path: Path, tiny_train_config: Callable) -> None:
    trainer = _trainer(tiny_train_config, image_path, steps=24, lr_s=2e-3, batch=4)
    history = [trainer.train_step() for _ in range(24)]
    assert all(np.isfinite(v) for losses in history for v in losses.values())
    mask = [h["mask"] for h in history]
    assert np.mean(mask[-6:]) < 0.9 * np.mean(mask[:6])


def test_resume_reproduces_uninterrupted_run(
    image_path: Path, tmp_path: Path, tiny_train_config: Callable
) -> None:
    straight = _trainer(tiny_train_config, image_path, steps=6)
    run(straight, tmp_path / "a.pt", checkpoint_every=0)
    first = _trainer(tiny_train_config, image_path, steps=6)
    run(first, tmp_path / "b.pt", checkpoint_every=0, until=3)
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 3
    config = tiny_train_config(steps=6)
    resumed = make_trainer([image_path], config, "cpu", tmp_path / "b.pt")
    run(resumed, tmp_path / "b.pt", checkpoint_every=0)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["step"] == b["step"] == 6
    for net in ("S", "S_train", "G", "D_image", "D_mask"):
        for key, value in a[net].items():
            assert torch.allclose(value.float(), b[net][key].float(), atol=1e-6), (net, key)


def test_refinement_resumes_exactly_mid_round(
    image_path: Path, tmp_path: Path, tiny_train_config: Callable
) -> None:
    """The self-training phase after the CycleGAN steps: interrupted mid-round and resumed, it ends
    where an uninterrupted run does (the round's labels are made again by the S that made them)."""
    settings = {"steps": 3, "refine_steps": 4, "refine_rounds": 2, "precision": "fp32"}
    straight = _trainer(tiny_train_config, image_path, **settings)
    run(straight, tmp_path / "a.pt", checkpoint_every=0)
    first = _trainer(tiny_train_config, image_path, **settings)
    run(first, tmp_path / "b.pt", checkpoint_every=0, until=6)  # inside the second round
    resumed = make_trainer([image_path], tiny_train_config(**settings), "cpu", tmp_path / "b.pt")
    run(resumed, tmp_path / "b.pt", checkpoint_every=0)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["step"] == b["step"] == 7 and a["refine"]["step"] == 4
    for key, value in a["S_train"].items():
        assert torch.equal(value, b["S_train"][key]), key


def test_warm_start_takes_the_checkpoints_nets_and_shape(
    image_path: Path, tmp_path: Path, tiny_train_config: Callable
) -> None:
    base = _trainer(tiny_train_config, image_path, steps=2, precision="fp32")
    run(base, tmp_path / "base.pt", checkpoint_every=0)
    config = tiny_train_config(steps=1, widths=[16, 32, 64, 128], diameter=[5.0, 50.0], precision="fp32")
    warm = make_trainer([image_path], config, "cpu", None, tmp_path / "base.pt")
    assert warm.config.widths == [8, 16, 32, 64] and warm.config.diameter == base.config.diameter
    saved = load_checkpoint(tmp_path / "base.pt")
    for name in ("S", "G", "D_image", "D_mask"):
        for key, value in saved[name].items():
            if value.is_floating_point() and not key.endswith(("running_mean", "running_var")):
                assert torch.equal(getattr(warm, name).state_dict()[key], value), (name, key)
    assert warm.config.init == str(tmp_path / "base.pt")


def test_init_weight_averages_the_deployed_s_with_the_warm_start(
    image_path: Path, tmp_path: Path, tiny_train_config: Callable
) -> None:
    """--init-weight W: the checkpoint's S is (1 - W) x the calibrated trained S + W x the start's S,
    every float entry; training itself (S_train) is untouched, and a resumed finished run applies it."""
    base = _trainer(tiny_train_config, image_path, steps=2, precision="fp32")
    run(base, tmp_path / "base.pt", checkpoint_every=0)
    start = load_checkpoint(tmp_path / "base.pt")["S"]
    config = tiny_train_config(steps=2, precision="fp32")
    warm = make_trainer([image_path], config, "cpu", None, tmp_path / "base.pt")
    run(warm, tmp_path / "warm.pt", checkpoint_every=0)
    plain = warm.checkpoint(full=False)["S"]
    trained = {k: v.clone() for k, v in warm.S.state_dict().items()}
    warm.config.init_weight = 0.25
    averaged = warm.checkpoint(full=False)["S"]
    for key, value in warm.S.state_dict().items():  # the averaging works on a copy, never on S
        assert torch.equal(value, trained[key]), key
    moved = 0
    for key, value in plain.items():
        if value.is_floating_point():
            expect = 0.75 * value + 0.25 * start[key]
            assert torch.allclose(averaged[key], expect, atol=1e-6), key
            moved += not torch.equal(value, start[key])
        else:
            assert torch.equal(averaged[key], value), key
    assert moved > 10  # trained weights differ from the start's: the average is not a no-op
    # an old finished run (no S_init saved) resumed with the option reads the start from config.init
    saved = load_checkpoint(tmp_path / "warm.pt")
    assert torch.equal(
        saved["S_init"]["downsample.down.res_down_0.conv.conv_0.0.weight"],
        start["downsample.down.res_down_0.conv.conv_0.0.weight"],
    )
    del saved["S_init"]
    torch.save(saved, tmp_path / "old.pt")
    resumed = make_trainer(
        [image_path], tiny_train_config(steps=2, init_weight=0.25), "cpu", tmp_path / "old.pt"
    )
    assert resumed.init_reloaded == str(tmp_path / "base.pt")
    run(resumed, tmp_path / "old.pt", checkpoint_every=0)
    again = load_checkpoint(tmp_path / "old.pt")
    assert again["config"]["init_weight"] == 0.25
    for key, value in saved["S_train"].items():
        assert torch.equal(again["S_train"][key], value), key
    for key, value in averaged.items():
        assert torch.allclose(again["S"][key].float(), value.float(), atol=1e-6), key
    # a run saved with S_init resumes from its own copy (the start's file may be gone), and keeps its
    # weight when the caller keeps it (the CLI without --init-weight)
    (tmp_path / "base.pt").unlink()
    warm.config.init_weight = 0.25
    run(warm, tmp_path / "w25.pt", checkpoint_every=0)
    kept = make_trainer(
        [image_path], tiny_train_config(steps=2), "cpu", tmp_path / "w25.pt", keep_init_weight=True
    )
    assert kept.config.init_weight == 0.25 and kept.init_reloaded is None
    run(kept, tmp_path / "w25.pt", checkpoint_every=0)
    for key, value in averaged.items():
        assert torch.allclose(
            load_checkpoint(tmp_path / "w25.pt")["S"][key].float(), value.float(), atol=1e-6
        )


def test_init_weight_needs_a_warm_start(image_path: Path, tmp_path: Path) -> None:
    args = ["train", "--images", str(image_path), "--out", str(tmp_path / "m.pt"), "--steps", "1"]
    for extra, needle in (
        (["--init-weight", "0.4"], "give --init"),
        (["--init-weight", "1.5"], "from 0 to 0.9"),
    ):
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert not (tmp_path / "m.pt").exists()
    tiny = ["--tile", "64", "--batch", "2", "--widths", "8,16,32,64"]
    assert CliRunner().invoke(app, [*args, *tiny]).exit_code == 0
    before = (tmp_path / "m.pt").read_bytes()
    result = CliRunner().invoke(app, [*args, *tiny, "--resume", "--init-weight", "0.4", "--init", "synth"])
    assert result.exit_code == 2 and "was not started with --init" in result.output, result.output
    assert (tmp_path / "m.pt").read_bytes() == before


@pytest.mark.skipif(
    not __import__("cyclepose_deploy.train.loop", fromlist=["cpu_has_bf16"]).cpu_has_bf16(),
    reason="this CPU has no native bfloat16 (AVX512-BF16 / AMX): bf16 training would be emulated",
)
def test_bf16_training_on_cpu_stays_finite_and_learns(image_path: Path, tiny_train_config: Callable) -> None:
    trainer = _trainer(tiny_train_config, image_path, steps=16, lr_s=2e-3, batch=4, precision="bf16")
    assert trainer.amp_dtype == torch.bfloat16
    history = [trainer.train_step() for _ in range(16)]
    assert all(np.isfinite(v) for losses in history for v in losses.values())
    assert np.mean([h["mask"] for h in history[-4:]]) < np.mean([h["mask"] for h in history[:4]])


def test_cli_train_writes_full_and_slim_checkpoints(image_path: Path, tmp_path: Path) -> None:
    out, slim = tmp_path / "full.pt", tmp_path / "slim.pt"
    args = ["train", "--images", str(image_path), "--out", str(out), "--slim-out", str(slim), "--steps", "2"]
    args += ["--tile", "64", "--batch", "2", "--widths", "8,16,32,64", "--checkpoint-every", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "optimizers" in load_checkpoint(out) and "optimizers" not in load_checkpoint(slim)
    net, config = load_segmenter(slim)
    assert config["widths"] == [8, 16, 32, 64] and config["tile"] == 64 and config["in_channels"] == 1
    assert slim.stat().st_size < out.stat().st_size


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--diameter", "30-10"], "--diameter"),
        (["--tile", "70"], "multiple of 16"),
        (["--resume"], "--resume"),
    ],
)
def test_cli_user_errors(image_path: Path, tmp_path: Path, extra: list[str], needle: str) -> None:
    args = ["train", "--images", str(image_path), "--out", str(tmp_path / "m.pt"), "--steps", "1", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and needle in result.output


class _CentralDifferences(torch.nn.Module):
    """A flip-equivariant stand-in for S: flows = central differences of the image, logit = image."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dy, dx = torch.zeros_like(x), torch.zeros_like(x)
        dy[..., 1:-1, :] = x[..., 2:, :] - x[..., :-2, :]
        dx[..., 1:-1] = x[..., 2:] - x[..., :-2]
        return torch.cat([dy, dx, x], 1)


def test_tta_pseudo_labels_flip_the_outputs_back_and_turn_the_flows() -> None:
    """refine.predict with tta: for a flip-equivariant net the mean over flips is its plain output
    (a flipped output not flipped back, or a flow component not negated, would differ)."""
    from contextlib import nullcontext

    from cyclepose_deploy.train.refine import predict

    image = np.random.default_rng(0).random((1, 40, 50), dtype=np.float32)
    net = _CentralDifferences()
    plain = predict(net, image, nullcontext, torch.contiguous_format)
    averaged = predict(net, image, nullcontext, torch.contiguous_format, tta=True)
    # away from the zero padding (its edge moves with the flip)
    np.testing.assert_allclose(averaged[:, 1:-1, 1:-1], plain[:, 1:-1, 1:-1], atol=1e-6)
    assert np.abs(plain[:2]).max() > 0.5
