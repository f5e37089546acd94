"""Write to a temporary name beside the target and rename when complete, so no half-written output remains."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cyclepose_deploy.errors import UserError

PARTIAL = ".partial"
SCRATCH_PREFIX = ".cyclepose-"
# Leftovers of killed runs: ".NAME.PID.RANDOM.partial" files, ".cyclepose-PID-RANDOM" scratch folders
# and the older ".NAME.partial-PID" files. Removed only when their process is gone and they are old
# (a run on another machine sharing the folder keeps touching its own).
LEFTOVER = re.compile(
    r"^\.(?:cyclepose-(?P<a>\d+)-.+|.+\.(?P<b>\d+)\.[^.]+\.partial|.+\.partial-(?P<c>\d+))$"
)
LEFTOVER_AGE_S = 3600.0


def scratch_prefix() -> str:
    return f"{SCRATCH_PREFIX}{os.getpid()}-"


def sweep_leftovers(folder: Path, min_age_s: float = LEFTOVER_AGE_S) -> list[str]:
    """Remove what killed runs left in `folder` (see LEFTOVER); return the names removed."""
    import shutil
    import time

    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = LEFTOVER.match(entry.name)
        if match is None or entry.is_symlink():
            continue
        pid = int(next(g for g in match.groups() if g is not None))
        try:
            old = now - entry.stat().st_mtime > min_age_s
        except OSError:
            continue
        if pid == os.getpid() or _alive(pid) or not old:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _temp_name(path: Path) -> Path:
    """A new, empty file beside `path` with an unpredictable name, created with O_EXCL (mkstemp), so a
    symlink planted in a shared output folder is never followed."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=PARTIAL, dir=path.parent)
    os.close(fd)
    return Path(name)


def check_writable(path: str | Path, folder_ok: bool = False) -> Path:
    """Fail early, before hours of work, when the output folder is missing or read-only."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder {parent} does not exist: create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}: choose a writable output path")
    if path.is_dir() and not folder_ok:
        raise UserError(f"output {path} is a folder: give a file name, e.g. {path / 'labels.tif'}")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to `path`, on any failure delete it."""
    final = check_writable(path)
    try:
        temp = _temp_name(final)
    except OSError as exc:
        raise UserError(f"could not write {final}: {exc.strerror or exc}; choose another path") from None
    try:
        yield temp
        os.replace(temp, final)
    except OSError as exc:
        _remove(temp)
        raise UserError(
            f"could not write {final}: {exc.strerror or exc}; free space or choose another path"
        ) from exc
    except BaseException:
        _remove(temp)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def write_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside `path` (mkdtemp: unpredictable, never a planted
    link); on success it replaces `path` (an older folder there is moved aside, then removed), on any
    failure it is deleted."""
    import shutil

    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=PARTIAL, dir=parent))
    except OSError as exc:
        raise UserError(f"could not write {final}: {exc.strerror or exc}; choose another path") from None
    try:
        yield temp
        old = None
        if final.is_symlink() or final.is_file():
            final.unlink()
        elif final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".old", dir=parent))
            os.replace(final, old / final.name)
        os.replace(temp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
