"""The one rich console every stage writes progress and reports to (stderr, so stdout stays pipeable).

A neutral module: the CLI, training and export all print through it without importing each other."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
