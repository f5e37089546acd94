"""What every subcommand shares: one-line user errors with exit code 2, and the console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.29 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    from click import exceptions as click  # type: ignore[no-redef]

from cyclepose_deploy.console import console
from cyclepose_deploy.errors import OptionError, UserError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["OneLineErrors", "console", "flag", "parse_int_list", "user_errors", "wide_help"]

FLAGS = {"labels": "-o"}  # settings whose flag is not --NAME


def flag(setting: str) -> str:
    """How the CLI names a setting in a message: tile -> --tile, skip_empty=False -> --no-skip-empty,
    channel=2 -> --channel 2 (errors.OptionError templates write settings as {name} or {name=value})."""
    name, _, value = setting.partition("=")
    option = FLAGS.get(name, "--" + name.replace("_", "-"))
    if value == "False":
        return "--no-" + name.replace("_", "-")
    return option if value in ("", "True") else f"{option} {value}"


def user_errors(func: F) -> F:
    """Print a UserError as `error: ...` on one line and exit 2; let real bugs raise."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OptionError as exc:
            print(f"error: {exc.render(flag)}", file=sys.stderr)
            raise typer.Exit(2) from None
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("error: interrupted; partial outputs were removed", file=sys.stderr)
            raise typer.Exit(130) from None
        except OSError as exc:  # permission denied, full disk, I/O error on a path we were given
            print(f"error: {os_error_text(exc)}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def os_error_text(exc: OSError) -> str:
    """One line for an OSError that reached the CLI boundary: what, which path, and the fix."""
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    what = exc.strerror or type(exc).__name__
    fix = {
        errno.EACCES: "check the file and folder permissions",
        errno.EPERM: "check the file and folder permissions",
        errno.ENOSPC: "free space or choose another output folder",
        errno.EDQUOT: "free space or choose another output folder",
        errno.EROFS: "choose a writable output folder",
        errno.ENOENT: "check the path",
        errno.EISDIR: "give a file, not a folder",
    }.get(exc.errno or 0, "check the path and try again")
    return f"cannot access{where}: {what}; {fix}"


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, e.g. 1,8; got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must list positive integers, e.g. 1,8; got {text!r}")
    return values


class OneLineErrors(TyperGroup):
    """The app's command group: what the option parser rejects (a value of the wrong type, outside a
    declared bound, an unknown option) is one `error:` line and exit 2, as our own checks are, instead
    of click's usage box; the line adds the option's declared range where cyclepose_deploy.limits has one."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            print(f"error: {parser_error_text(exc)}", file=sys.stderr)
            sys.exit(2)
        except typer.Abort:
            print("error: interrupted; partial outputs were removed", file=sys.stderr)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def parser_error_text(exc: click.ClickException) -> str:
    """One line for the parser's complaint, with the option's declared range (limits) when known."""
    text = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    param = getattr(exc, "param", None)
    command = getattr(getattr(exc, "ctx", None), "info_name", None)
    if isinstance(exc, click.BadParameter) and param is not None and command is not None:
        bound = declared_range(command, param.name or "")
        if bound is not None:
            name = param.opts[0] if param.opts else param.name
            text = f"{text.rstrip('.')}; {name} must be {bound.describe()}"
    help_hint = f" (see cyclepose {command} --help)" if command and command != "cyclepose" else ""
    return text + help_hint


def declared_range(command: str, name: str) -> Any:
    """The Range (cyclepose_deploy.limits) of a command's option, or None."""
    from cyclepose_deploy import limits

    table = {
        "infer": limits.INFER,
        "train": limits.TRAIN,
        "synth": limits.SYNTH,
        "bench": limits.BENCH,
        "export": limits.EXPORT,
    }.get(command, {})
    if name == "threads":
        return limits.threads()
    return table.get(name) or table.get(name.removesuffix("_size"))


def wide_help(columns: int = 120) -> None:
    """--help at least `columns` wide where the terminal does not say (pipes, CI: rich assumes 80 and
    cuts option names such as --cellprob-threshold); TERMINAL_WIDTH still wins."""
    import os

    from typer import rich_utils

    if not os.environ.get("TERMINAL_WIDTH") and not os.environ.get("COLUMNS"):
        rich_utils.MAX_WIDTH = columns
