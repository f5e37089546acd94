"""`cyclepose export`: a checkpoint (or Cellpose 3 model) -> verified ONNX fp32/fp16/int8, an optional
TensorRT engine, and the manifest the runtime trusts."""

from __future__ import annotations

from pathlib import Path

import typer

from cyclepose_deploy.cli.common import console, user_errors
from cyclepose_deploy.defaults import PRECISIONS
from cyclepose_deploy.errors import UserError


def parse_precisions(text: str) -> tuple[str, ...]:
    """'fp32,int8' -> ('fp32', 'int8'); fp32 is always exported (the others derive from it)."""
    wanted = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad or not wanted:
        raise UserError(f"--precision {text!r} is invalid: use a comma list of {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in wanted or p == "fp32")


def say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def export(
        checkpoint: Path = typer.Argument(
            ...,
            help="CyclePose model.pt, a Cellpose 3 model file, or a shipped model: 'nuclei' (real "
            "fluorescence nuclei) or 'synth' (synthetic slides).",
        ),
        out_dir: Path = typer.Option(..., "-o", "--output", help="Folder for model*.onnx, engine, manifest."),
        precision: str = typer.Option(
            ",".join(PRECISIONS), "--precision", help=f"Comma list: {', '.join(PRECISIONS)}."
        ),
        calib: list[Path] = typer.Option([], "--calib", help="Calibration image(s) for int8 (repeatable)."),
        profile: str | None = typer.Option(
            None,
            "--profile",
            help="Deployment profile: a shipped NAME (cpu, jetson-orin-nano, jetson-agx-orin, server-gpu) "
            "or a TOML file.",
        ),
        engine: bool | None = typer.Option(
            None,
            "--engine/--no-engine",
            help="Build a TensorRT engine (default: if TensorRT and a GPU exist).",
        ),
        opset: int = typer.Option(17, "--opset", help="ONNX opset (13-21)."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for verification."),
        bioimageio: bool = typer.Option(
            False, "--bioimageio", help="Also write a BioImage Model Zoo package (bioimageio/rdf.yaml)."
        ),
        bmz_maintainer: list[str] = typer.Option(
            [], "--bmz-maintainer", help="With --bioimageio: a maintainer, GITHUB_USER or GITHUB_USER:Name."
        ),
        bmz_evaluation: Path | None = typer.Option(
            None,
            "--bmz-evaluation",
            help="With --bioimageio: a benchmarks/real_quality.py JSON, the package's evaluation.",
        ),
    ) -> None:
        """Export S to ONNX (fp32, fp16, int8) and TensorRT, verified against torch, with a manifest."""
        from cyclepose_deploy.export.pipeline import ExportOptions, run_export
        from cyclepose_deploy.export.profiles import load_profile
        from cyclepose_deploy.shipped import shipped_or_path

        checkpoint = shipped_or_path(checkpoint)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir} is a file: -o needs a folder")
        options = ExportOptions(
            checkpoint=checkpoint,
            out_dir=out_dir,
            precisions=parse_precisions(precision),
            calib=list(calib),
            profile=load_profile(profile),
            engine=engine,
            opset=opset,
            threads=threads,
            bioimageio=bioimageio,
            bmz_maintainers=tuple(bmz_maintainer),
            bmz_evaluation=bmz_evaluation,
        )
        if (bmz_maintainer or bmz_evaluation) and not bioimageio:
            raise UserError("--bmz-maintainer and --bmz-evaluation describe the --bioimageio package: add it")
        manifest = run_export(options, report=say)
        names = ", ".join(a.file for a in manifest.artifacts)
        console.print(f"[green]exported[/green] {names} and manifest.json to {out_dir}")
