"""Deployment profiles: tile, batch min/opt/max, precision, workspace, threads.

The named ones ship inside the package (cyclepose_deploy/profiles/NAME.toml, package data) and are read
with importlib.resources, so `--profile jetson-orin-nano` works from any folder and from an installed wheel.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from cyclepose_deploy.defaults import BATCH, PRECISIONS, SIZE_MULTIPLE, TILE
from cyclepose_deploy.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Profile:
    name: str
    precision: str
    tile: int
    batch: tuple[int, int, int]
    tile_range: tuple[int, int, int]
    workspace_mb: int
    threads: int

    def input_shapes(self, channels: int) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) NCHW shapes for a TensorRT optimisation profile (square tiles)."""
        return tuple((b, channels, t, t) for b, t in zip(self.batch, self.tile_range, strict=True))


DEFAULT = Profile("default", "fp16", TILE, (1, BATCH, 2 * BATCH), (64, TILE, 2 * TILE), 2048, 0)


def _triple(data: dict[str, Any], key: str, where: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(data[key][k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        example = "{ min = 1, opt = 8, max = 16 }"
        raise UserError(f"{where}: {key} needs min, opt and max integers, e.g. {example}") from None
    if not 1 <= low <= opt <= high:
        raise UserError(f"{where}: {key} must satisfy 1 <= min <= opt <= max, got {low}, {opt}, {high}")
    return low, opt, high


def shipped_profiles() -> dict[str, Traversable]:
    """The profiles that ship with the package, by name (file stem)."""
    folder = resources.files("cyclepose_deploy") / "profiles"
    if not folder.is_dir():
        return {}
    files = (f for f in folder.iterdir() if f.is_file() and f.name.endswith(".toml"))
    return {f.name[: -len(".toml")]: f for f in sorted(files, key=lambda f: f.name)}


def load_profile(spec: str | Path | None) -> Profile:
    """A profile from a TOML file path or the name of a shipped profile; None gives the default."""
    if spec is None:
        return DEFAULT
    source: Path | Traversable = Path(spec)
    shipped = shipped_profiles()
    if not Path(spec).is_file() and str(spec) in shipped:
        source = shipped[str(spec)]
    if not source.is_file():
        have = ", ".join(shipped) or "none shipped"
        raise UserError(f"profile {spec} not found: pass a TOML file or a shipped profile name ({have})")
    return profile_from_toml(source.read_text(encoding="utf-8"), str(spec), Path(source.name).stem)


def profile_from_toml(text: str, where: str, stem: str) -> Profile:
    """Validate a profile's TOML text; `where` names it in errors, `stem` is the default name."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where} is not valid TOML ({exc}): fix the file") from None
    tiles = _triple(data, "tile_range", where)
    if any(t % SIZE_MULTIPLE for t in tiles):
        raise UserError(f"{where}: tile_range values must be multiples of {SIZE_MULTIPLE}, got {tiles}")
    precision = str(data.get("precision", "fp16"))
    if precision not in PRECISIONS:
        raise UserError(f"{where}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return Profile(
        name=str(data.get("name", stem)),
        precision=precision,
        tile=int(data.get("tile", tiles[1])),
        batch=_triple(data, "batch", where),
        tile_range=tiles,
        workspace_mb=int(data.get("workspace_mb", 2048)),
        threads=int(data.get("threads", 0)),
    )
