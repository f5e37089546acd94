"""The one rich console every stage writes progress and reports to (stderr, so stdout stays pipeable).

A neutral module: the CLI, training and export all print through it without importing each other."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)

_verbose = False


def set_verbosity(*, quiet: bool = False, verbose: bool = False) -> None:
    """--quiet: nothing but errors (which are printed to stderr directly); --verbose: commands also
    print what they would otherwise keep to themselves (runner settings, every option)."""
    global _verbose
    console.quiet = quiet
    _verbose = verbose and not quiet


def is_verbose() -> bool:
    return _verbose
