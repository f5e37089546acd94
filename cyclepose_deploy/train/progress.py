"""A rich progress bar with the latest losses; without a terminal (logs, CI), a plain line every
`log_every` steps instead, so a long run can be followed from its log file."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cyclepose_deploy.console import console
from cyclepose_deploy.train.run import StepCallback


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in losses.items())


@contextlib.contextmanager
def progress_callback(start: int, total: int, log_every: int = 25) -> Iterator[StepCallback]:
    if not console.is_terminal:
        began = time.monotonic()

        def log(step: int, losses: dict[str, float]) -> None:
            if step % log_every == 0 or step == total:
                rate = (time.monotonic() - began) / max(step - start, 1)
                line = f"step {step}/{total} {rate:.2f} s/step {format_losses(losses)}"
                console.print(line, highlight=False)

        yield log
        return
    columns = (
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=total, completed=start, losses="")

        def on_step(step: int, losses: dict[str, float]) -> None:
            progress.update(task, completed=step, losses=format_losses(losses))

        yield on_step
