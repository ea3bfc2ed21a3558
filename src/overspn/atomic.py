"""Atomic file writes: a temporary file in the target folder, flushed, then renamed over the target.

A reader (or a run resumed after a crash) therefore sees either the old file or the complete new one, never a part,
and a failed write leaves no temporary file behind. The new file keeps the permissions of the file it replaces, else
gets those an ordinary ``open(path, "w")`` would give it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_output"]


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
    """A new empty file next to ``path`` with the umask's permissions (``tempfile.mkstemp`` would make it private)."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
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
