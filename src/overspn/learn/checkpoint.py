"""The one checkpoint format of overspn: the complete state of a run of :func:`overspn.fit`, written atomically.

A checkpoint is ``torch.save`` of a dict of tensors and plain values (loaded with ``weights_only=True``, so a file
cannot run code): the format name and version, the *fingerprint* (the settings a resumed run must share with the
interrupted one), and the run's state (model, optimizer, best parameters, history, ...). :func:`write_checkpoint`
replaces the file atomically, so a run killed at any moment leaves the previous checkpoint or the new one.
:func:`read_checkpoint` raises :class:`ModelFileError` for a damaged or foreign file and
:class:`ConfigurationError` naming every setting that differs from the fingerprint given.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.atomic import atomic_write_bytes
from overspn.errors import ConfigurationError, ModelFileError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "write_checkpoint", "read_checkpoint", "plain", "content_digest"]

CHECKPOINT_FORMAT = "overspn-checkpoint"
CHECKPOINT_VERSION = 1
_ADVICE = "run again with --restart, or delete it, to start afresh"


def plain(value: Any) -> Any:
    """``value`` with tuples as lists, recursively: the form a fingerprint is compared in."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def content_digest(array: Any) -> str | None:
    """SHA-256 of an array's values, shape and dtype (None for None): what a fingerprint records of a data set, so
    that a run is never resumed on other data that merely has the same name and size."""
    if array is None:
        return None
    values = np.ascontiguousarray(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array)
    digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.data.cast("B"))
    return digest.hexdigest()


def write_checkpoint(path: str | Path, fingerprint: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values) with ``fingerprint`` to ``path``, atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "fingerprint": plain(fingerprint),
                **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The state stored in ``path`` (None when there is no such file), after checking it matches ``fingerprint``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    except Exception as error:  # torch raises many types (RuntimeError, UnpicklingError, EOFError, ...) for damage
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path}: damaged or unreadable checkpoint ({reason}); {_ADVICE}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an overspn checkpoint; {_ADVICE}")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{path}: checkpoint version {state.get('version')!r}, this overspn reads version "
                             f"{CHECKPOINT_VERSION}; {_ADVICE}")
    stored, expected = state.get("fingerprint"), plain(fingerprint)
    if stored != expected:
        stored = stored if isinstance(stored, dict) else {}
        differences = ", ".join(f"{key}: {stored.get(key)!r} there, {expected.get(key)!r} now"
                                for key in sorted(set(stored) | set(expected)) if stored.get(key) != expected.get(key))
        raise ConfigurationError(f"{path} was written by a run with other settings ({differences}); use another "
                                 f"output folder, or {_ADVICE}")
    return state
