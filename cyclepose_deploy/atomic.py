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
# Leftovers of killed runs carry their owner: ".NAME.PID@HOST.RANDOM.partial" files and
# ".cyclepose-PID@HOST-RANDOM" scratch folders (HOST: a short hash of the host name). The next run in
# the folder removes those of this host whose process is gone, and only reports the others (a run on
# another machine sharing the folder cannot be checked from here).
LEFTOVER = re.compile(
    r"^\.(?:cyclepose-(?P<a>\d+)@(?P<ha>[0-9a-f]+)-.+|.+\.(?P<b>\d+)@(?P<hb>[0-9a-f]+)\.[^.]+\.partial)$"
)


def _host() -> str:
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def owner_tag() -> str:
    """PID@HOST of this process, as written into temporary names."""
    return f"{os.getpid()}@{_host()}"


def scratch_prefix() -> str:
    return f"{SCRATCH_PREFIX}{owner_tag()}-"


def sweep_leftovers(folder: Path) -> tuple[list[str], list[str]]:
    """(removed, kept): leftovers of killed runs in `folder` (see LEFTOVER). Removed: this host's
    whose process no longer runs. Kept (to report): other hosts'."""
    import shutil

    removed: list[str] = []
    kept: list[str] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed, kept
    host = _host()
    for entry in entries:
        match = LEFTOVER.match(entry.name)
        if match is None or entry.is_symlink():
            continue
        pid = int(match.group("a") or match.group("b"))
        if (match.group("ha") or match.group("hb")) != host:
            kept.append(entry.name)
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    return removed, kept


def alive_owner(tag: str) -> bool:
    """True when PID@HOST names a live process of this host other than this one (another host's
    process cannot be checked from here: False)."""
    pid, _, host = tag.partition("@")
    if host != _host() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it by setting it (briefly) and restoring it
    os.umask(mask)
    return mask


def _publish_mode(path: Path, folder: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the final output the mode a plain open() would have."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _temp_name(path: Path) -> Path:
    """A new, empty file beside `path` with an unpredictable name, created with O_EXCL (mkstemp): a
    link planted in the folder before the run is never written through. (Writers reopen the name,
    so someone who can write to the folder and sees the name during the run could still swap it:
    do not write outputs into folders that untrusted users can write to.)"""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=PARTIAL, dir=path.parent)
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
        if temp.is_symlink():
            raise UserError(f"{temp} was replaced by a link during the run: refusing to publish {final}")
        _publish_mode(temp)
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
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside `path` (mkdtemp: an unpredictable name, never a
    planted link); on success it replaces `path` (an older folder there is moved aside, then removed;
    if the final rename fails the older one is put back), on any failure it is deleted."""
    import shutil

    final = Path(path).resolve()
    parent = final.parent
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=PARTIAL, dir=parent))
    except OSError as exc:
        raise UserError(f"could not write {final}: {exc.strerror or exc}; choose another path") from None
    try:
        yield temp
        _publish_mode(temp, folder=True)
        swap_folder(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def swap_folder(new: Path, final: Path) -> None:
    """Put folder `new` at `final` with renames; a previous `final` is removed only once `new` is in
    place (and restored if that rename fails)."""
    import shutil

    old = None
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=PARTIAL, dir=final.parent))
        os.replace(final, old / final.name)
    try:
        os.replace(new, final)
    except BaseException:
        if old is not None:
            os.replace(old / final.name, final)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing(what: object) -> Iterator[None]:
    """Name the output that failed (full disk, quota, I/O error) in one line."""
    try:
        yield
    except OSError as exc:
        raise UserError(
            f"could not write {what}: {exc.strerror or exc}; free space or choose another path"
        ) from None
