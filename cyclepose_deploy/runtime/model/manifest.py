"""The export manifest: what the runtime needs to run an artifact, and hashes that stop a wrong one."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from cyclepose_deploy import limits
from cyclepose_deploy.defaults import (
    FLOW_SCALE,
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISIONS,
    SIZE_MULTIPLE,
)
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.tensorrt import TensorRTInfo

SCHEMA = "cyclepose-manifest/1"
MANIFEST_NAME = "manifest.json"
FORMATS = ("onnx", "tensorrt")
__all__ = ["Artifact", "Manifest", "TensorRTInfo", "load_manifest", "sha256_file", "verify_artifact"]


@dataclass
class Artifact:
    file: str
    format: str
    precision: str
    sha256: str
    verification: dict[str, Any] = field(default_factory=dict)
    passed: bool = True
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}


@dataclass
class Manifest:
    """max_extent: the longest extent of a nucleus in pixels, from the shape prior the model was trained
    with (the chunk halo needs it); optional, manifests written before it existed lack it."""

    channels: int
    diameter: list[float]
    normalization: dict[str, float]
    source_sha256: str
    artifacts: list[Artifact]
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    input_layout: str = "NCHW"
    output_layout: str = "NCHW"
    size_multiple: int = SIZE_MULTIPLE
    flow_scale: float = FLOW_SCALE
    max_extent: float | None = None
    tensorrt: TensorRTInfo | None = None
    tools: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA
    root: Path | None = field(default=None, compare=False, repr=False)
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}  # a misspelt field is an error

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        return {"schema": data.pop("schema"), **data}

    def artifact(self, format: str, precision: str) -> Artifact:
        """The artifact with this format and precision, or a UserError listing what the export holds."""
        for art in self.artifacts:
            if art.format == format and art.precision == precision:
                return art
        have = ", ".join(f"{a.format}/{a.precision}" for a in self.artifacts) or "nothing"
        raise UserError(f"no {format} {precision} artifact here (it has {have}): export it or pick one")

    def save(self, directory: str | Path) -> Path:
        from cyclepose_deploy.atomic import write_json_atomic

        return write_json_atomic(Path(directory) / MANIFEST_NAME, self.to_dict())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_from_dict(data: Any, where: str = "manifest") -> Manifest:
    """Validate a parsed manifest; every problem is a UserError naming the field and the fix."""
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a JSON object: re-export the model")
    if data.get("schema") != SCHEMA:
        raise UserError(f"{where} has schema {data.get('schema')!r}, this runtime reads {SCHEMA}: re-export")
    fields = {k: v for k, v in data.items() if k not in ("schema", "root")}
    try:  # the whole schema, typed (pydantic, strict: "16" is not an int, null is not a number)
        manifest = _adapter().validate_json(json.dumps(fields), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        place = ".".join(str(p) for p in first["loc"]) or "top level"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise UserError(f"{where} is malformed: {place}: {first['msg']}{more}; re-export the model") from None
    _check_values(manifest, where)
    return manifest


@functools.cache
def _adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Manifest)


def _check_values(m: Manifest, where: str) -> None:
    """Every number within its declared range (limits.MODEL: the same rules export applied when it
    wrote it), percentiles lower < upper, diameter min <= max."""
    from cyclepose_deploy.errors import OptionError

    problems = []
    table = limits.MODEL
    checks: list[tuple[str, object, limits.Range]] = [
        ("flow_scale", m.flow_scale, table["flow_scale"]),
        ("channels", m.channels, table["channels"]),
        ("size_multiple", m.size_multiple, table["size_multiple"]),
        *(("diameter", d, table["diameter"]) for d in m.diameter),
        *((f"normalization_{k}", v, table["percentile"]) for k, v in m.normalization.items()),
    ]
    if m.max_extent is not None:
        checks.append(("max_extent", m.max_extent, table["max_extent"]))
    for name, value, bound in checks:
        try:
            bound.check(name, value)
        except OptionError as exc:
            problems.append(str(exc))
    if len(m.diameter) != 2:
        problems.append("diameter must be [min, max]")
    elif not m.diameter[0] <= m.diameter[1]:
        problems.append(f"diameter {m.diameter} (need min <= max)")
    lower, upper = m.normalization.get("lower", 1.0), m.normalization.get("upper", 99.0)
    if not lower < upper:
        problems.append(
            f"normalization lower {lower:g} >= upper {upper:g} (need lower < upper, e.g. 1 and 99)"
        )
    for art in m.artifacts:
        if art.format not in FORMATS or art.precision not in PRECISIONS:
            problems.append(f"artifact {art.file}: format/precision {art.format}/{art.precision}")
        if len(art.sha256) != 64 or Path(art.file).name != art.file:
            problems.append(f"artifact {art.file}: bad sha256 or a path instead of a file name")
    if problems:
        raise UserError(f"{where} is invalid: {'; '.join(problems)}: re-export the model")


def load_manifest(directory: str | Path) -> Manifest:
    """Read and validate DIR/manifest.json (DIR may also be the manifest file itself)."""
    path = Path(directory)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"no manifest at {path}: point to a folder written by `cyclepose export`")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): re-export the model") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a manifest: re-export the model") from None
    manifest = manifest_from_dict(data, str(path))
    manifest.root = path.parent
    return manifest


def verify_artifact(manifest: Manifest, file: str | Path) -> Path:
    """Return the artifact's path once its sha256 matches the manifest; refuse it otherwise."""
    path = Path(file)
    if not path.is_absolute() and manifest.root is not None:  # relative to the export, never the cwd
        path = manifest.root / path.name
    listed = [a for a in manifest.artifacts if a.file == path.name]
    if not listed:
        raise UserError(f"{path.name} is not listed in the manifest: use an artifact from the same export")
    if not path.is_file():
        raise UserError(f"artifact {path} is missing: re-export with `cyclepose export`")
    if sha256_file(path) != listed[0].sha256:
        raise UserError(
            f"artifact {path.name} does not match its manifest sha256 (modified or from another export): "
            "re-export with `cyclepose export`"
        )
    return path
