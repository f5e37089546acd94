"""A rich progress bar that shows the latest losses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cyclepose_deploy.cli.common import console
from cyclepose_deploy.train.run import StepCallback


@contextlib.contextmanager
def progress_callback(start: int, total: int) -> Iterator[StepCallback]:
    columns = (
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=total, completed=start, losses="")

        def on_step(step: int, losses: dict[str, float]) -> None:
            text = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            progress.update(task, completed=step, losses=text)

        yield on_step
