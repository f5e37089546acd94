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
    if not 2 <= low <= high <= 500:
        raise UserError(f"--diameter needs 2 <= MIN <= MAX <= 500 px, e.g. 10-30; got {text!r}")
    return [low, high]


def parse_coverage(text: str) -> tuple[float, float | None]:
    """'0.3' -> (0.3, None); '0.05-0.4' -> each mask canvas draws its coverage in [0.05, 0.4]."""
    try:
        parts = [float(v) for v in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not all(0.02 <= v <= 0.8 for v in parts) or parts != sorted(parts):
        raise UserError(
            f"--coverage must be a fraction or MIN-MAX within 0.02-0.8, e.g. 0.3 or 0.05-0.4; got {text!r}"
        )
    return parts[0], (parts[1] if len(parts) == 2 else None)


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
        coverage: str = typer.Option(
            "0.3", help="Area fraction covered by nuclei, or a range MIN-MAX drawn per mask canvas."
        ),
        real_grad: bool = typer.Option(
            True,
            "--real-grad/--no-real-grad",
            help="S learns from real images through the image cycle and D_mask (the paper); "
            "--no-real-grad: S learns from renderings only (a departure, for ablations).",
        ),
        rescale: bool = typer.Option(
            True,
            "--rescale/--no-rescale",
            help="Resample each image so its nuclei (blob estimate) match the mask prior's mean diameter, "
            "as the runtime does before S.",
        ),
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
        init: str = typer.Option(
            None,
            "--init",
            help="Warm start: a shipped model (nuclei, synth), a model.pt or a Cellpose 3 model file; its "
            "widths, channels and diameter range are kept, and training adapts it to --images.",
        ),
        precision: str = typer.Option(
            "auto",
            "--precision",
            help="CPU arithmetic: auto (bf16 where the CPU has native bf16, else fp32), bf16 or fp32. CUDA "
            "always trains in fp16 mixed precision.",
        ),
        refine_steps: int = typer.Option(
            0,
            "--refine-steps",
            help="After the CycleGAN steps, this many steps of self-training on S's own confident "
            "nuclei in --images (a departure from the paper; docs/train.md). 0: off.",
        ),
        refine_rounds: int = typer.Option(
            2, "--refine-rounds", help="Times the images are labelled again during --refine-steps."
        ),
        refine_synthetic: float = typer.Option(
            0.25,
            "--refine-synthetic",
            help="Share of each --refine-steps batch rendered by G from synthetic masks (exact targets: "
            "the shape prior and its outlines stay), in [0, 1).",
        ),
        refine_tta: bool = typer.Option(
            False,
            "--refine-tta",
            help="Pseudo-labels from S's outputs averaged over flips in y, x and both (Cellpose's augment): "
            "smoother outlines to learn from, 4x the labelling time.",
        ),
        init_weight: float = typer.Option(
            None,
            "--init-weight",
            help="Share of the --init model's weights in the S this run writes: S = (1 - W) x trained + "
            "W x start, BatchNorm statistics averaged too (weight-space ensembling, WiSE-FT; a "
            "departure). Default 0: off; with --resume, the run's own value unless given.",
        ),
        border: float = typer.Option(
            0.25,
            "--border-crops",
            help="Fraction of crops that reach past an image edge (zeros there, masks cut), as the runtime "
            "sees nuclei on a slide's border.",
        ),
    ) -> None:
        """Train CyclePose on unlabeled images; S is what `cyclepose export` deploys."""
        import torch

        from cyclepose_deploy.atomic import check_writable
        from cyclepose_deploy.shipped import shipped_or_path
        from cyclepose_deploy.train.loop import TrainConfig
        from cyclepose_deploy.train.progress import progress_callback
        from cyclepose_deploy.train.run import make_trainer, run

        if device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible to torch; use --device cpu")
        check_writable(out)
        if slim_out is not None:
            check_writable(slim_out)
        if resume and not out.is_file():
            raise UserError(f"--resume but {out} does not exist; drop --resume to start a new run")
        from cyclepose_deploy import limits

        if max_minutes is not None:
            max_minutes = limits.TRAIN["max_minutes"].check("max_minutes", max_minutes)
        checkpoint_every = limits.TRAIN["checkpoint_every"].check("checkpoint_every", checkpoint_every)
        threads = limits.threads().check("threads", threads)
        torch.set_num_threads(threads)
        cover = parse_coverage(coverage)
        config = TrainConfig(
            widths=parse_int_list(widths, "--widths"),
            diameter=parse_diameter(diameter),
            coverage=cover[0],
            coverage_max=cover[1],
            real_grad=real_grad,
            rescale_images=rescale,
            tile=tile,
            batch=batch,
            steps=steps,
            seed=seed,
            lr_s=lr_s,
            lr=lr,
            precision=precision,
            border=border,
            refine_steps=refine_steps,
            refine_rounds=refine_rounds,
            refine_synthetic=refine_synthetic,
            refine_tta=refine_tta,
            init_weight=init_weight if init_weight is not None else 0.0,
        )
        start = shipped_or_path(init) if init is not None else None
        trainer = make_trainer(
            [*images, *(more or [])], config, device, out if resume else None, start, init_weight is None
        )
        if trainer.init_reloaded is not None:
            console.print(f"--init-weight averages with the start read again from {trainer.init_reloaded}")
        with progress_callback(trainer.step, trainer.config.total_steps) as on_step:
            summary = run(
                trainer, out, checkpoint_every, slim_out, max_minutes, on_step, provenance=_provenance()
            )
        rescaled = [s for s in trainer.crops.scales if s != 1.0]
        if rescaled:
            console.print(
                f"rescaled {len(rescaled)} of {len(trainer.crops.scales)} images to diameter "
                f"{trainer.config.diam_mean:g} px (scales {min(rescaled):.2f}-{max(rescaled):.2f})"
            )
        console.print(
            f"trained {summary['steps']} steps (now {summary['step']}) in {summary['seconds']:.0f} s -> {out}"
        )


def _provenance() -> dict[str, str]:
    """The command line and the machine, kept in the checkpoint beside the training time."""
    import os
    import platform
    import shlex
    import sys

    import torch

    from cyclepose_deploy.runtime.benchmark import cpu_model

    return {
        "command": "cyclepose " + shlex.join(_collapse_paths(sys.argv[1:])),
        "hardware": f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "torch": str(torch.__version__),  # TorchVersion would not load with weights_only=True
    }


def _collapse_paths(args: list[str]) -> list[str]:
    """Runs of files from one folder (a shell glob) become 'FOLDER/*.EXT' so the command stays short."""
    from pathlib import Path

    out: list[str] = []
    run: list[Path] = []

    def flush() -> None:
        if len(run) > 3:
            out.append(f"{run[0].parent}/*{run[0].suffix}")
        else:
            out.extend(str(p) for p in run)
        run.clear()

    for arg in args:
        path = Path(arg)
        if path.is_file() and (not run or (path.parent == run[0].parent and path.suffix == run[0].suffix)):
            run.append(path)
            continue
        flush()
        if path.is_file():
            run.append(path)
        else:
            out.append(arg)
    flush()
    return out
