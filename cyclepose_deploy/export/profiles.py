"""Deployment profiles (export/profiles/*.toml): tile, batch min/opt/max, precision, workspace, threads."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILE_DIR = Path("export/profiles")


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


DEFAULT = Profile("default", "fp16", 256, (1, 8, 16), (64, 256, 512), 2048, 0)


def _triple(data: dict[str, Any], key: str, where: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(data[key][k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        example = "{ min = 1, opt = 8, max = 16 }"
        raise UserError(f"{where}: {key} needs min, opt and max integers, e.g. {example}") from None
    if not 1 <= low <= opt <= high:
        raise UserError(f"{where}: {key} must satisfy 1 <= min <= opt <= max, got {low}, {opt}, {high}")
    return low, opt, high


def load_profile(spec: str | Path | None) -> Profile:
    """A profile from a TOML path or a name in export/profiles/; None gives the default."""
    if spec is None:
        return DEFAULT
    path = Path(spec)
    if not path.is_file() and (PROFILE_DIR / f"{spec}.toml").is_file():
        path = PROFILE_DIR / f"{spec}.toml"
    if not path.is_file():
        have = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
        raise UserError(f"profile {spec} not found: pass a TOML file or one of {have or 'export/profiles/'}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML ({exc}): fix the file") from None
    tiles = _triple(data, "tile_range", str(path))
    if any(t % 16 for t in tiles):
        raise UserError(f"{path}: tile_range values must be multiples of 16, got {tiles}")
    precision = str(data.get("precision", "fp16"))
    if precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"{path}: precision {precision!r} is not one of fp32, fp16, int8")
    return Profile(
        name=str(data.get("name", path.stem)),
        precision=precision,
        tile=int(data.get("tile", tiles[1])),
        batch=_triple(data, "batch", str(path)),
        tile_range=tiles,
        workspace_mb=int(data.get("workspace_mb", 2048)),
        threads=int(data.get("threads", 0)),
    )
