"""`cyclepose train`: learn S from unlabeled images and synthetic masks (CyclePose)."""

from __future__ import annotations

from pathlib import Path

import typer

from cyclepose_deploy.cli.common import console, parse_int_list, user_errors
from cyclepose_deploy.errors import UserError


def parse_diameter(text: str) -> list[float]:
    try:
        low, high = (float(v) for v in text.split("-"))
    except ValueError:
        raise UserError(f"--diameter must be MIN-MAX in pixels, e.g. 10-30; got {text!r}") from None
    if not 2 <= low <= high:
        raise UserError(f"--diameter needs 2 <= MIN <= MAX, e.g. 10-30; got {text!r}")
    return [low, high]


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def train(
        images: list[Path] = typer.Option(
            ..., "--images", help="Unlabeled training TIFF(s); repeat or list."
        ),
        more: list[Path] = typer.Argument(
            None, help="More training images (after --images).", show_default=False
        ),
        out: Path = typer.Option(..., "--out", help="Full, resumable checkpoint (written every K steps)."),
        steps: int = typer.Option(3000, min=1, help="Total training steps (also the target of --resume)."),
        slim_out: Path = typer.Option(None, "--slim-out", help="Also write a small checkpoint for export."),
        device: str = typer.Option("cpu", help="cpu or cuda (cuda uses mixed precision)."),
        tile: int = typer.Option(128, min=32, help="Training crop size (multiple of 16)."),
        batch: int = typer.Option(8, min=1),
        diameter: str = typer.Option("10-30", help="Nucleus diameter range of the mask prior, pixels."),
        coverage: float = typer.Option(0.3, min=0.02, max=0.8, help="Area fraction covered by nuclei."),
        widths: str = typer.Option("16,32,64,128", help="S widths (Cellpose: 32,64,128,256)."),
        lr_s: float = typer.Option(1e-3, help="Adam learning rate of S."),
        lr: float = typer.Option(2e-4, help="Adam learning rate of G and the discriminators."),
        seed: int = typer.Option(0),
        resume: bool = typer.Option(False, "--resume", help="Continue from --out up to --steps."),
        checkpoint_every: int = typer.Option(
            200, min=0, help="Steps between checkpoints (0: only at the end)."
        ),
        max_minutes: float = typer.Option(None, help="Stop (and save) after this much wall time."),
        threads: int = typer.Option(1, min=1, help="CPU threads (1 is fastest on a busy 2-core machine)."),
    ) -> None:
        """Train CyclePose on unlabeled images; S is what `cyclepose export` deploys."""
        import torch

        from cyclepose_deploy.runtime.atomic import check_writable
        from cyclepose_deploy.train.loop import TrainConfig
        from cyclepose_deploy.train.progress import progress_callback
        from cyclepose_deploy.train.run import make_trainer, run

        if tile % 16:
            raise UserError(f"--tile must be a multiple of 16, got {tile}")
        if device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible to torch; use --device cpu")
        check_writable(out)
        if slim_out is not None:
            check_writable(slim_out)
        if resume and not out.is_file():
            raise UserError(f"--resume but {out} does not exist; drop --resume to start a new run")
        torch.set_num_threads(threads)
        config = TrainConfig(
            widths=parse_int_list(widths, "--widths"),
            diameter=parse_diameter(diameter),
            coverage=coverage,
            tile=tile,
            batch=batch,
            steps=steps,
            seed=seed,
            lr_s=lr_s,
            lr=lr,
        )
        trainer = make_trainer([*images, *(more or [])], config, device, out if resume else None)
        with progress_callback(trainer.step, trainer.config.steps) as on_step:
            summary = run(trainer, out, checkpoint_every, slim_out, max_minutes, on_step)
        console.print(
            f"trained {summary['steps']} steps (now {summary['step']}) in {summary['seconds']:.0f} s -> {out}"
        )
