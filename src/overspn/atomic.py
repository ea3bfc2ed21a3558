"""Atomic file writes: a temporary file in the target folder, flushed, then renamed over the target.

A reader (or a run resumed after a crash) therefore sees either the old file or the complete new one, never a part,
and a failed write leaves no temporary file behind. The new file keeps the permissions of the file it replaces, else
gets those an ordinary ``open(path, "w")`` would give it.

A write killed outright (SIGKILL, power loss) can still leave its temporary, ``.NAME.HOST-PID-TOKEN.tmp.SUFFIX``
(hidden, next to ``NAME``); :func:`sweep_stale_temporaries` removes those whose writer is gone. :func:`output_lock`
keeps two runs from writing into one output folder at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overspn.errors import ConfigurationError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_output",
           "sweep_stale_temporaries", "output_lock", "LOCK_NAME"]

LOCK_NAME = ".overspn.lock"
#: ``.NAME.HOST-PID-TOKEN.tmp.SUFFIX`` (this module's temporaries) or ``.NAME.TOKEN.tmp.SUFFIX`` (older versions')
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-)?[0-9a-f]{8}\.tmp(?:\.[^.]*)?$")


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, move the file written there onto ``path``.

    For writers that want a file name rather than bytes (``figure.savefig(temporary)``, ``torch.save``). The
    temporary name ends in ``path``'s suffix, so writers that pick the format from the suffix still work. If the block
    raises, ``path`` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)  # keep the permissions of the file replaced
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
        stream.flush()


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, value: Any) -> None:
    """Write ``value`` as indented JSON with sorted keys."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _create_temporary(path: Path) -> Path:
    """A new empty file next to ``path`` with the umask's permissions (``tempfile.mkstemp`` would make it private),
    named after this host and process so that :func:`sweep_stale_temporaries` can tell when its writer is gone."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def _sync_folder(folder: Path) -> None:
    """Flush the rename to disk where the platform allows opening a folder (not on Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# -- leftovers of killed writes -------------------------------------------------------------------------------------


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def sweep_stale_temporaries(folder: Path | str, older_than_seconds: float = 24 * 3600.0,
                            recursive: bool = False) -> list[Path]:
    """Remove the temporaries that killed atomic writes left in ``folder``; return the files removed.

    Only hidden files named like this module's temporaries are considered. One is removed when its writer (the
    process id in its name) no longer runs on this host, or, when that cannot be known (written on another host, or
    by an older overspn without the process in the name), when it was last modified more than
    ``older_than_seconds`` ago. The temporaries of writes in progress are left alone. ``recursive``: also in the
    folders below ``folder``. A missing folder has nothing to sweep.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        candidates = list(folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"))
    except OSError:
        return removed
    host, now = _host_tag(), time.time()
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if match["pid"] is not None and match["host"] == host:
            stale = int(match["pid"]) != os.getpid() and not _alive(int(match["pid"]))
        else:
            try:
                stale = now - path.stat().st_mtime > older_than_seconds
            except OSError:
                continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


# -- one run per output folder --------------------------------------------------------------------------------------


@contextlib.contextmanager
def output_lock(folder: Path | str, description: str = "") -> Iterator[Path]:
    """Hold ``folder/.overspn.lock`` for the duration of the block, so that two runs never write into one folder.

    The lock file is created atomically (``O_CREAT | O_EXCL``) and holds this process's id, host, start time, command
    line and ``description``. If another run holds it, ConfigurationError names that run's process id and command.
    A lock left by a run that is gone (its process no longer exists on this host) is taken over. The lock is
    removed when the block ends, however it ends. Yields the lock file's path. ``folder`` is created if needed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    token = secrets.token_hex(8)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": _command_line(),
              "description": description, "token": token}
    content = (json.dumps(record, indent=2) + "\n").encode()
    for _ in range(20):
        try:
            handle = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _take_over_or_refuse(lock, folder)
            continue
        try:
            os.write(handle, content)
            os.fsync(handle)
        finally:
            os.close(handle)
        break
    else:  # pragma: no cover - only when other processes keep racing for the lock
        raise ConfigurationError(f"cannot lock the output folder {folder}: other runs keep taking it")
    try:
        yield lock
    finally:
        held = _read_lock(lock)
        if held is not None and held.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _command_line() -> str:
    arguments = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return " ".join(arguments)


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _take_over_or_refuse(lock: Path, folder: Path) -> None:
    """Remove ``lock`` when its holder is gone; raise ConfigurationError naming the holder when it is not."""
    holder = _read_lock(lock)
    if holder is None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        if age < 10:  # being written by its creator right now
            time.sleep(0.05)
            return
        stale = True  # unreadable and old: the writer died while creating it
    else:
        pid = holder.get("pid")
        same_host = holder.get("host") == socket.gethostname()
        stale = (same_host and isinstance(pid, int) and not isinstance(pid, bool) and pid != os.getpid()
                 and not _alive(pid))
    if not stale:
        holder = holder or {}
        where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
        raise ConfigurationError(
            f"the output folder {folder} is in use by another overspn run (pid {holder.get('pid')}{where}, started "
            f"{holder.get('started_at', '?')}: {holder.get('command', '?')}); wait for it to end or choose another "
            f"output folder (if that run is gone, remove {lock})")
    # take it over: move it aside atomically, and put it back if it changed meanwhile (another run took it over)
    aside = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _read_lock(aside) != holder:
        with contextlib.suppress(OSError):
            os.link(aside, lock)
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()
