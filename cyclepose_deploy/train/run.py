"""Drive a Trainer for N steps: progress bar, periodic atomic checkpoints, resume, slim export."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import OptionError, UserError
from cyclepose_deploy.train.checkpoint import load_checkpoint, load_init, save_checkpoint
from cyclepose_deploy.train.data import ImageCrops
from cyclepose_deploy.train.loop import TrainConfig, Trainer

StepCallback = Callable[[int, dict[str, float]], None]


def image_crops(images: Sequence[str | Path], config: TrainConfig) -> ImageCrops:
    """The image domain as the config asks for it (normalisation, rescaling to diam_mean)."""
    norm = config.normalization
    target = config.diam_mean if config.rescale_images else None
    return ImageCrops(images, config.tile, norm["lower"], norm["upper"], target)


def init_config(config: TrainConfig, init: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """A warm start's config: the network's shape and scale (in_channels, widths, diameter range and
    coverage, normalisation) come from the checkpoint `init` (a CyclePose checkpoint, full or slim, or a
    Cellpose 3 model file), the training knobs from `config`. Returns (config, the checkpoint's nets by
    name: "S" always, "G", "D_image", "D_mask" where it has them)."""
    import dataclasses

    saved, nets = load_init(init)
    keys = ["in_channels", "widths", "normalization", "render_width", "disc_base"]
    if saved.get("source") != "cellpose3":  # a Cellpose model knows one diameter: keep the user's range
        keys.append("diameter")
    inherit = {k: saved[k] for k in keys if k in saved}
    return dataclasses.replace(config, **inherit, init=str(init)), nets


def make_trainer(
    images: Sequence[str | Path],
    config: TrainConfig,
    device: str,
    resume_from: Path | None,
    init: Path | None = None,
    keep_init_weight: bool = False,
) -> Trainer:
    """A fresh Trainer (warm-started from the checkpoint `init` when given: init_config), or one
    restored from a full checkpoint (its config wins, except `steps`, `refine_steps` and
    `init_weight`, which `keep_init_weight` keeps too: the CLI without --init-weight). On a resume,
    `init` is only read when the checkpoint lacks the start's S (one saved before `S_init` existed).
    OptionError for init_weight without a warm start."""
    nets: dict[str, Any] = {}
    if init is not None and resume_from is None:
        config, nets = init_config(config, init)
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        if "S_train" not in checkpoint:
            raise UserError(
                f"{resume_from} is a slim checkpoint without training state; resume from the full --out"
            )
        saved = {k: v for k, v in checkpoint["config"].items() if k in TrainConfig.__dataclass_fields__}
        saved["steps"], saved["refine_steps"] = config.steps, config.refine_steps
        if not keep_init_weight:
            saved["init_weight"] = config.init_weight  # applies to the S this run writes next
        try:
            config = TrainConfig(**saved)
        except TypeError as exc:
            raise UserError(
                f"{resume_from} has a config this version cannot use ({exc}); start a new run"
            ) from None
    if config.init_weight and config.init is None:
        if resume_from is not None:
            raise OptionError(
                "init_weight",
                f"{{init_weight}} needs a warm start, and the run in {resume_from} was not "
                "started with {init}: resume without {init_weight}, or start a new run with both",
            )
        raise OptionError(
            "init_weight", "{init_weight} averages S with the weights it started from: give {init} too"
        )
    crops = image_crops(images, config)
    if resume_from is None and init is None:
        config.in_channels = crops.channels
    elif crops.channels != config.in_channels:
        source = resume_from or init
        raise UserError(
            f"images have {crops.channels} channel(s), the checkpoint {source} {config.in_channels}"
        )
    trainer = Trainer(config, crops, device)
    if nets:
        trainer.warm_start(nets)
    if resume_from is not None:
        try:
            trainer.load(checkpoint)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UserError(
                f"{resume_from} cannot be resumed (training state missing or of another shape: {detail}); "
                "start a new run without --resume"
            ) from None
        trainer.seconds = float(checkpoint.get("provenance", {}).get("train_seconds", 0.0))
        if config.init_weight and trainer.S_init is None:
            trainer.init_reloaded = _reload_init(trainer, init)
    return trainer


def _reload_init(trainer: Trainer, init: Path | None) -> str:
    """The warm start's S of a run whose full checkpoint predates `S_init`: from `init` when given,
    else from the file the run names (which a newer release may have replaced: the caller says which
    file was read). Returns its path."""
    path = str(init) if init is not None else trainer.config.init
    if path is None or not Path(path).is_file():
        raise UserError(
            f"--init-weight needs the warm start's weights: the run names {path}, which is not a file; "
            "pass the model it started from as --init"
        )
    state = load_init(Path(path))[1]["S"]
    try:
        trainer.set_init(state)
    except ValueError:
        raise UserError(
            f"--init-weight: {path} is not the network this run trained; start a new run"
        ) from None
    return path


def run(
    trainer: Trainer,
    out: Path,
    checkpoint_every: int,
    slim_out: Path | None = None,
    max_minutes: float | None = None,
    on_step: StepCallback | None = None,
    until: int | None = None,
    provenance: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train until `config.total_steps` (or the time limit); write the full checkpoint every K steps and
    at the end, and the slim one (no training state) at the end; `until` stops early at that step
    (the schedules still aim at the configured steps). Returns a summary."""
    start = time.monotonic()
    first = trainer.step
    total = trainer.config.total_steps
    last = total if until is None else min(until, total)
    while trainer.step < last:
        losses = trainer.train_step()
        _check_finite(trainer, losses, out)
        if on_step is not None:
            on_step(trainer.step, losses)
        if checkpoint_every and trainer.step % checkpoint_every == 0 and trainer.step < total:
            partial = trainer.checkpoint(full=True)
            elapsed = trainer.seconds + time.monotonic() - start
            partial["provenance"] = {**(provenance or {}), "train_seconds": elapsed}
            save_checkpoint(out, partial)
        if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
            break
    final = trainer.checkpoint(full=True)
    seconds = time.monotonic() - start
    trainer.seconds += seconds
    final["provenance"] = {**(provenance or {}), "train_seconds": trainer.seconds}
    save_checkpoint(out, final)
    if slim_out is not None:
        save_checkpoint(slim_out, {k: v for k, v in final.items() if k in SLIM_KEYS})
    return {"steps": trainer.step - first, "step": trainer.step, "seconds": seconds}


def _check_finite(trainer: Trainer, losses: dict[str, float], out: Path) -> None:
    """Stop with a clear error, before any checkpoint is written, when a loss or weight turns NaN/Inf
    (a NaN checkpoint would load and silently segment nothing)."""
    import math

    bad = sorted(name for name, value in losses.items() if not math.isfinite(value))
    if not bad:
        if trainer.step % 10:  # weights follow the losses; checking them every 10 steps is enough
            return
        for name in ("S", "G", "D_image", "D_mask"):
            net = getattr(trainer, name, None)
            if net is not None and not all(bool(p.detach().isfinite().all()) for p in net.parameters()):
                bad.append(f"{name} weights")
        if not bad:
            return
    kept = f"the last good checkpoint stays at {out}" if out.exists() else "no checkpoint was written"
    raise UserError(
        f"training diverged at step {trainer.step}: {', '.join(bad)} not finite; {kept}. "
        "Check the images (saturated or constant ones) or lower the learning rate"
    )


SLIM_KEYS = ("config", "step", "S", "G", "D_image", "D_mask", "provenance")
