"""What every subcommand shares: one-line user errors with exit code 2, and the console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from cyclepose_deploy.console import console
from cyclepose_deploy.errors import OptionError, UserError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["console", "flag", "parse_int_list", "user_errors"]

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
