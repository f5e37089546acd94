"""The run folder: pass 1's store next to the labels output (`LABELS.run/`), kept when a run is
interrupted (Ctrl-C, kill -9, a lost driver) so that `--resume` finishes only the missing chunks.

    LABELS.run/run.json      what the run depends on (slide, model, settings, normalisation, scale):
                             a resume with anything different is refused, naming what differs
    LABELS.run/tissue.json   which chunks run (runtime.tissue: tissue in reach), once decided
    LABELS.run/ids.zarr ...  the store (runtime.scratch), done/ marks each finished chunk

The folder is removed when the outputs are written, and when a run fails before any chunk finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclepose_deploy.atomic import owner_tag, write_json_atomic
from cyclepose_deploy.errors import OptionError, UserError, literal
from cyclepose_deploy.runtime.run.scratch import finished_chunks

if TYPE_CHECKING:
    from cyclepose_deploy.runtime.run.context import RunContext

SUFFIX = ".run"
FINGERPRINT = "run.json"
TISSUE = "tissue.json"
OWNER = "owner.json"  # the session writing now: {"token": ..., "owner": "PID@HOST"}
VERSION = 4  # 2: fingerprints of InferOptions groups; 3: the planned tile sides; 4: chunk side


def run_folder(labels: Path) -> Path:
    """The run folder of a labels output: LABELS.run beside it."""
    return labels.with_name(labels.name + SUFFIX)


def check_run_folder(folder: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: an interrupted run's folder is continued (resume) or replaced (overwrite),
    never silently thrown away. UserError otherwise, and for a planted link or a file in its place."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"{folder} is a link or a file, not a run folder: remove it")
    if folder.exists() and not (resume or overwrite):
        raise OptionError(
            "resume",
            f"an interrupted run of this output is saved in {literal(folder)}: pass {{resume=True}} to "
            "finish only its missing chunks, or {overwrite=True} to start over",
        )


def file_identity(path: str | Path) -> dict[str, Any]:
    """Path, size and modification time: a file changed since the interrupted run is not resumed."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    """What the labels of a run depend on: a resume with anything different is refused."""
    assert ctx.path is not None and ctx.working is not None and ctx.runner is not None
    model, options = ctx.model, ctx.options
    return {
        "package": package_version(),
        "slide": file_identity(ctx.path),
        "image": ctx.source.description,
        "model": {**file_identity(model.path), "format": model.format, "precision": model.precision},
        "device": ctx.runner.device,
        "options": {
            "image": options.image,
            "tiling": options.tiling,
            "dynamics": options.dynamics,
            "skip_empty": options.run.skip_empty,
        },
        "normalization": ctx.norm,
        "scale": ctx.scale,
        "shape": ctx.working.shape,
        "tile_sides": ctx.job().grid.sides,  # the planned grid: a rule that fits tiles may change
        "chunk_side": ctx.job().block,  # the chunks' rule may change between versions too
        "chunks": len(ctx.chunks),
        "prob": ctx.outputs.prob is not None,
    }


def package_version() -> str:
    """This package's version, for the fingerprint: chunks of another version are not mixed in."""
    from importlib import metadata

    try:
        return metadata.version("cyclepose-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and paths as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _canonical(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from run.json (dataclasses as dicts, tuples as lists)."""
    return json.loads(json.dumps(_plain({"version": VERSION, **fingerprint}), sort_keys=True, default=str))


@contextlib.contextmanager
def open_run(
    folder: Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool, say: Callable[[str], None]
) -> Iterator[tuple[bool, str]]:
    """Enter the run folder; yields (resumed, token). resumed: an interrupted run with the same
    fingerprint goes on (its finished chunks are kept); otherwise any old folder is replaced
    (check_run_folder has vetted that), also on resume with another fingerprint when `overwrite`.
    token: this session's id, written to OWNER; workers write only while it is still the owner's, so
    tasks that outlive a killed driver cannot write into a later run. A folder owned by a live process
    of this host is refused. On success the folder is removed; on failure it is kept if any chunk
    finished."""
    wanted = _canonical(fingerprint)
    resumed = False
    if folder.is_dir() and not folder.is_symlink():
        _check_owner(folder)
        if resume:
            stored = _load(folder)
            differ = sorted(k for k in set(wanted) | set(stored) if wanted.get(k) != stored.get(k))
            if not differ:
                resumed = True
            elif overwrite:
                say(f"the interrupted run in {literal(folder)} had other {', '.join(differ)}: starting over")
            else:
                raise OptionError(
                    "resume",
                    f"the interrupted run in {literal(folder)} was made with other inputs or settings "
                    f"({', '.join(differ)} differ): resume with the same slide, model and options, or "
                    "pass {overwrite=True} to start over",
                )
        if not resumed:
            shutil.rmtree(folder)
    elif resume:
        say(f"nothing to resume in {literal(folder)}: starting a new run")
    if not resumed:
        folder.mkdir(mode=0o700)
        write_json_atomic(folder / FINGERPRINT, wanted)
    token = uuid.uuid4().hex
    write_json_atomic(folder / OWNER, {"token": token, "owner": owner_tag()})
    try:
        yield resumed, token
    except BaseException:
        done = len(finished_chunks(folder))
        if done:
            with contextlib.suppress(OSError):
                (folder / OWNER).unlink()  # stray tasks of this session stop writing
            say(
                f"interrupted: {done} finished chunk(s) are kept in {literal(folder)}; run the same command "
                "with {resume=True} to finish only the others"
            )
        else:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)


def owner_token(folder: str | Path) -> str | None:
    """The token of the session that owns the run folder now (None: no owner, or no folder)."""
    try:
        return str(json.loads((Path(folder) / OWNER).read_text())["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_owner(folder: Path) -> None:
    from cyclepose_deploy.atomic import alive_owner

    try:
        owner = str(json.loads((folder / OWNER).read_text())["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if alive_owner(owner):
        raise UserError(
            f"another run ({owner}) is writing to {folder}: wait for it to end, or choose another output"
        )


def _load(folder: Path) -> dict[str, Any]:
    try:
        stored = json.loads((folder / FINGERPRINT).read_text())
    except (OSError, ValueError):
        raise OptionError(
            "overwrite",
            f"{literal(folder)} has no readable {FINGERPRINT}: it is not a run folder of this version; "
            "pass {overwrite=True} to start over",
        ) from None
    if not isinstance(stored, dict):
        raise OptionError(
            "overwrite", f"{literal(folder / FINGERPRINT)} is damaged: pass {{overwrite=True}} to start over"
        )
    return stored


def load_tissue(folder: Path, count: int) -> list[bool] | None:
    """The per-chunk run decisions (tissue in reach) saved by an earlier attempt of this run, or None."""
    try:
        flags = json.loads((folder / TISSUE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(flags, list) and len(flags) == count and all(isinstance(f, bool) for f in flags):
        return flags
    return None


def save_tissue(folder: Path, flags: list[bool]) -> None:
    write_json_atomic(folder / TISSUE, flags)
