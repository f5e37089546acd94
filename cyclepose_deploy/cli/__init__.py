"""The `cyclepose` command. Each subcommand lives in its own module and imports its heavy
dependencies only when it runs, so one missing optional package disables one command, not the CLI."""

from __future__ import annotations

import importlib

from cyclepose_deploy.memory import limit_malloc_arenas

limit_malloc_arenas()  # must precede every thread a library may start (see memory.py)

import typer  # noqa: E402

COMMANDS = ("synth", "train", "export", "infer", "bench", "eval")

app = typer.Typer(
    name="cyclepose",
    help="CyclePose nuclei segmentation: train without annotations, export, and run on slides of any size.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """CyclePose nuclei segmentation: train without annotations, export, and run on slides of any size."""


for _name in COMMANDS:
    importlib.import_module(f"cyclepose_deploy.cli.{_name}_cmd").register(app)


def main() -> None:
    app()
