"""`cyclepose synth`: write a realistic synthetic nuclei slide and its ground-truth labels."""

from __future__ import annotations

from pathlib import Path

import typer

from cyclepose_deploy import limits
from cyclepose_deploy.cli.common import console, user_errors
from cyclepose_deploy.defaults import DIAMETER
from cyclepose_deploy.errors import UserError

TIFF_SUFFIXES = (".tif", ".tiff")
DIAMETER_TEXT = f"{DIAMETER[0]:g}-{DIAMETER[1]:g}"


def parse_diameter(text: str) -> tuple[float, float]:
    """'10-30' -> (10.0, 30.0); a single number means a fixed diameter."""
    parts = text.split("-")
    try:
        low, high = (float(parts[0]), float(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or not 3 <= low <= high <= 200:
        raise UserError(f"--diameter must be MIN-MAX pixels, 3 <= MIN <= MAX <= 200, e.g. 10-30: {text!r}")
    return low, high


def _slide_shape(size: int | None, height: int | None, width: int | None) -> tuple[int, int]:
    """(H, W) within limits.SYNTH["size"] (a band of 512 rows of the widest slide stays near 1 GB)."""
    height = height if height is not None else size
    width = width if width is not None else size
    if height is None or width is None:
        raise UserError("slide size is missing: pass --size N, or --height H and --width W")
    if min(height, width) < limits.SYNTH["size"].low:
        raise UserError(f"slide size {height}x{width} is too small: use at least 16 pixels per side")
    name = "size" if size is not None and height == width == size else "height" if height != size else "width"
    for value in (height, width):
        limits.SYNTH["size"].check(name, value)
    return height, width


def _check_outputs(out: Path, labels: Path | None) -> None:
    for path in (out, labels):
        if path is not None and path.suffix.lower() not in TIFF_SUFFIXES:
            raise UserError(f"output {path} is not a .tif/.tiff name: synth writes (OME) TIFF files")
    if labels is not None and out.resolve() == labels.resolve():
        raise UserError("the slide and --labels name the same file: choose two different paths")


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def synth(
        out: Path = typer.Argument(..., help="Slide to write (uint16 OME BigTIFF)."),
        size: int | None = typer.Option(None, "--size", help="Square slide side in pixels."),
        height: int | None = typer.Option(None, "--height", help="Slide height (overrides --size)."),
        width: int | None = typer.Option(None, "--width", help="Slide width (overrides --size)."),
        labels: Path | None = typer.Option(None, "--labels", help="Ground-truth instance labels (uint32)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same slide."),
        diameter: str = typer.Option(
            DIAMETER_TEXT, "--diameter", help="Nucleus diameter range MIN-MAX in px."
        ),
        pixel_size: float = typer.Option(0.65, "--pixel-size", help="Physical pixel size in um."),
    ) -> None:
        """Write a synthetic fluorescence nuclei slide (and its labels), streamed band by band."""
        h, w = _slide_shape(size, height, width)
        low, high = parse_diameter(diameter)
        _check_outputs(out, labels)
        seed = limits.SYNTH["seed"].check("seed", seed)
        pixel_size = limits.SYNTH["pixel_size"].check("pixel_size", pixel_size)
        count = _run(out, labels, h, w, seed, low, high, pixel_size)
        where = f" and labels to {labels}" if labels is not None else ""
        console.print(f"wrote {h}x{w} slide with {count} nuclei to {out}{where}")


def _run(
    out: Path, labels: Path | None, h: int, w: int, seed: int, low: float, high: float, pixel_size: float
) -> int:
    from rich.progress import Progress

    from cyclepose_deploy.synth.shapes import ShapePrior
    from cyclepose_deploy.synth.slide import write_slide

    prior = ShapePrior(diameter_min=low, diameter_max=high)
    with Progress(console=console, transient=True, disable=h * w < 4096 * 4096) as progress:
        task = progress.add_task("synthesising bands", total=None)

        def on_band(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return write_slide(out, labels, h, w, seed, prior, pixel_size=pixel_size, on_band=on_band)
