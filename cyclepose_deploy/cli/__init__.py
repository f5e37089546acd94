"""The `cyclepose` command. Each subcommand lives in its own module and imports its heavy
dependencies only when it runs, so one missing optional package disables one command, not the CLI."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from typing import NoReturn

from cyclepose_deploy.memory import limit_malloc_arenas

limit_malloc_arenas()  # must precede every thread a library may start (see memory.py)

import typer  # noqa: E402

from cyclepose_deploy.cli.common import OneLineErrors, wide_help  # noqa: E402

COMMANDS = ("synth", "train", "export", "infer", "bench", "eval")

wide_help()
app = typer.Typer(
    name="cyclepose",
    cls=OneLineErrors,
    help="CyclePose nuclei segmentation: train without annotations, export, and run on slides of any size.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from cyclepose_deploy.version import __version__

        print(f"cyclepose-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final result lines."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also the runner's settings and every note."),
) -> None:
    """CyclePose nuclei segmentation: train without annotations, export, and run on slides of any size."""
    from cyclepose_deploy.console import set_verbosity

    set_verbosity(quiet=quiet, verbose=verbose)


for _name in COMMANDS:
    importlib.import_module(f"cyclepose_deploy.cli.{_name}_cmd").register(app)


def main() -> NoReturn:
    """The console script: the command, then the exit without the interpreter's teardown (_leave)."""
    try:
        app()
    except SystemExit as exc:
        _leave(exc.code)
    _leave(0)


def _leave(code: object) -> NoReturn:
    """End the process with `code` as sys.exit would, once the exit handlers have run (zarr's event
    loop, Dask clients, temporary folders), but without freeing every module and JIT-compiled function:
    that teardown took 0.45 s after every command here (numba's and scipy's), and the work is done,
    every output closed (Instagram's services skip the final collection the same way)."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    _flush()
    atexit._run_exitfuncs()
    _flush()
    os._exit(status)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more to say there
            pass
