"""Saving and loading models without pickle.

A model file is a zip archive holding ``model.json`` (format name, version, the model's ``kind``, its dtype and the
arguments that rebuild its layout: for a compiled structure the compile options and the structure in the column form
of :mod:`overspn.structure_columns` (versions 1 and 2: one object per node, :mod:`overspn.structure_json`), for a
tensorised model its configuration) and one ``.npy`` array per parameter, read with
``allow_pickle=False``. Loading therefore never executes code from the file; anything unexpected raises
:class:`ModelFileError`. Every model class of the engine registers its kind, so what loads back is a model of the
same class, with the same behaviour (training, EM, queries).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch

from overspn.atomic import atomic_write_bytes
from overspn.engine.base import MODEL_KINDS, SPNModule
from overspn.engine.weights import WEIGHT_PARAMETRISATIONS
from overspn.errors import ModelFileError, OverspnError
from overspn.limits import (
    StoredArray,
    check_arrays,
    check_estimate,
    describe_bytes,
    json_limit_check,
    layout_estimate,
    load_limit,
)
from overspn.structure_columns import columns_from_entries, is_columns, read_columns
from overspn.structure_json import (  # noqa: F401 (re-exported: the structure of a model file, read and written)
    BELOW_ONE,
    SMALLEST,
    in_float_range,
    is_number,
    shorten,
    structure_for_file,
    structure_from_dict,
    structure_to_dict,
)

__all__ = ["save", "load", "read_header", "structure_to_dict", "structure_from_dict"]

FORMAT = "overspn-model"
VERSION = 3  # 1: compiled structures only, without "kind"; 2: structures as one object per node
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def save(model: SPNModule, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (its layout, options and exact parameter values) to ``path`` atomically.

    ``metadata``: JSON-compatible facts to keep with the model (e.g. the data and settings it was trained with);
    :func:`read_header` returns them without building the model.

    Raises ModelFileError, writing nothing, when the parameters are not those of a usable model (NaN, a negative
    raw weight, a zero partition function: e.g. after training diverged), since such a file could not be loaded.
    """
    if not isinstance(model, SPNModule) or not model.kind:
        raise ModelFileError(f"cannot save a {type(model).__name__}: only overspn models can be saved")
    problem = _parameter_problem(model)
    if problem is not None:
        raise ModelFileError(f"cannot save the model to {path}: {problem}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ModelFileError(f"metadata must be a dict, got {type(metadata).__name__}")
    header = {"format": FORMAT, "version": VERSION, "kind": model.kind,
              "dtype": str(model.dtype).removeprefix("torch."), **model.file_config(), "metadata": metadata or {}}
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"cannot save the model to {path}: metadata is not plain JSON ({error})") from error
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.json", text)
        for key, tensor in model.state_dict().items():
            array = io.BytesIO()
            np.save(array, tensor.detach().cpu().numpy(), allow_pickle=False)
            archive.writestr(f"tensors/{key}.npy", array.getvalue())
    atomic_write_bytes(Path(path), buffer.getvalue())


def load(path: str | os.PathLike[str]) -> SPNModule:
    """Read a model written by :func:`save`. Never unpickles; raises ModelFileError for a bad file.

    Beyond the format and version, every field of the header is type-checked and the parameters must be floats of
    the expected shapes that make a usable model (no NaN, no negative raw weight, a finite partition function, a
    Gaussian standard deviation that is neither 0 nor infinite), so a damaged file cannot load into a model that
    silently returns NaN. Before anything is built, the memory the declared layout needs is estimated from the header
    and the stored arrays' headers alone and compared with the limit of :mod:`overspn.limits`, so a small crafted
    file cannot exhaust memory. Every other failure (out of memory, a number out of range, a structure too deep, a
    path the operating system refuses) is reported as a ModelFileError naming the file as well.
    """
    path = Path(path)
    load_limit(0)  # a malformed $OVERSPN_MEMORY_BUDGET is the caller's ConfigurationError, not the file's
    try:
        return _load(path)
    except ModelFileError:
        raise
    except OverspnError as error:
        raise ModelFileError(f"{path}: the stored model is invalid: {error}") from error
    except MemoryError as error:
        raise ModelFileError(f"{path}: loading the model needs more memory than is available; set "
                             "OVERSPN_MEMORY_BUDGET to refuse such files before they are read") from error
    except RecursionError as error:
        raise ModelFileError(f"{path}: the model file is nested too deeply to be read ({error})") from error
    except OverflowError as error:
        raise ModelFileError(f"{path}: the model file holds a number out of range ({error})") from error
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read the model file ({error.strerror or error})") from error
    except Exception as error:  # zipfile, zlib, json and numpy raise many types for damaged input
        raise ModelFileError(f"{path}: corrupted or truncated model file ({type(error).__name__}: {error})") from error


def _load(path: Path) -> SPNModule:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as stream:
        magic = stream.read(4)
        size = os.fstat(stream.fileno()).st_size
    if not magic.startswith(b"PK"):
        raise ModelFileError(f"{path}: not an overspn model file (it is not a zip archive)" if magic
                             else f"{path}: the model file is empty")
    limit = load_limit(size)
    with zipfile.ZipFile(path) as archive:
        return _load_archive(path, archive, limit)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a model file (format, version, kind, dtype, layout arguments, metadata) and its number of
    parameters; the whole file is checked first, like :func:`load` does. Raises ModelFileError."""
    path = Path(path)
    model = load(path)  # the header is only trusted once the whole file has been checked
    try:
        with zipfile.ZipFile(path) as archive:
            header = json.loads(archive.read("model.json"))
    except Exception as error:  # the file changed since it was loaded
        raise ModelFileError(f"{path}: the model file changed while it was read ({type(error).__name__}: "
                             f"{error})") from error
    header["num_parameters"] = model.num_parameters()
    header.setdefault("metadata", {})
    return header


def _load_archive(path: Path, archive: zipfile.ZipFile, limit: tuple[int, str]) -> SPNModule:
    names = set(archive.namelist())
    if "model.json" not in names:
        raise ModelFileError(f"{path}: not an overspn model file (no model.json inside)")
    try:
        json_limit_check(archive.getinfo("model.json"), limit)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
    header, kind = _checked_header(path, json.loads(archive.read("model.json")))
    dtype = _DTYPES[header["dtype"]]
    try:
        # budgets before allocation: the stored arrays' headers and the declared layout, read without building
        arrays, stored_bytes = check_arrays(archive)
        if kind == "compiled":  # read once, into arrays, for both steps below (older files: when well-formed)
            columns = header["structure"] if is_columns(header["structure"]) else columns_from_entries(
                header["structure"])
            if columns is not None:
                header = {**header, "structure": read_columns(columns)}
        _check_budget(kind, header, dtype, arrays, stored_bytes, limit)
        model = MODEL_KINDS[kind].from_file_config(header, dtype)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
    model.load_state_dict(_stored_state(path, archive, names, arrays, model))
    problem = _parameter_problem(model)
    if problem is not None:
        raise ModelFileError(f"{path}: the stored parameters do not make a usable model: {problem}")
    return model


def _checked_header(path: Path, header: Any) -> tuple[dict[str, Any], str]:
    """The header of a model file and its model kind, once its format, version, kind and fields are checked."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ModelFileError(f"{path}: not an overspn model file (format {found!r}, expected {FORMAT!r})")
    version = header.get("version")
    if version not in (1, 2, VERSION) or isinstance(version, bool):
        newer = _is_int(version) and version > VERSION
        raise ModelFileError(f"{path}: model file version {version!r} is not supported (this overspn reads versions "
                             f"1 to {VERSION}{'; the file was written by a newer overspn' if newer else ''})")
    kind = header.get("kind", "compiled") if version == 1 else header.get("kind")
    if kind not in MODEL_KINDS:
        raise ModelFileError(f"{path}: unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_KINDS))})")
    if not isinstance(header.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: header field 'metadata' must be an object, got {header['metadata']!r}")
    fields = {"dtype": _HEADER_FIELDS["dtype"], **(_COMPILED_FIELDS if kind == "compiled" else {})}
    for field, accepted in fields.items():
        if field not in header:
            raise ModelFileError(f"{path}: the header has no field {field!r}")
        if not accepted(header[field]):
            raise ModelFileError(f"{path}: header field {field!r} has an invalid value {shorten(header[field])}")
    return header, kind


def _check_budget(kind: str, header: dict[str, Any], dtype: torch.dtype, arrays: dict[str, StoredArray],
                  stored_bytes: int, limit: tuple[int, str]) -> None:
    """Raise ModelFileError when the declared layout or the stored arrays would take more memory than ``limit``,
    or the layout declares far more parameters than the file stores."""
    estimate = layout_estimate(kind, header, dtype.itemsize)
    if estimate is not None:
        check_estimate(estimate, stored_bytes, limit)
        stored = sum(array.size for array in arrays.values())
        # a small shortfall is reported precisely, parameter by parameter, once the (small) model is built
        if estimate.parameters > 2 * stored + 4096:
            raise ModelFileError(f"its layout declares at least {estimate.parameters} parameters, but the file "
                                 f"stores {stored} values")
    elif stored_bytes > limit[0]:
        raise ModelFileError(f"its parameters take {describe_bytes(stored_bytes)}, more than the limit of "
                             f"{limit[1]}")


def _stored_state(path: Path, archive: zipfile.ZipFile, names: set[str], arrays: dict[str, StoredArray],
                  model: SPNModule) -> dict[str, torch.Tensor]:
    """The stored parameters of ``model``, each checked for presence, shape and a floating-point dtype."""
    state = {}
    for key, expected in model.state_dict().items():
        entry = f"tensors/{key}.npy"
        if entry not in names or key not in arrays:
            raise ModelFileError(f"{path}: parameter {key!r} is missing")
        if arrays[key].shape != tuple(expected.shape):
            raise ModelFileError(
                f"{path}: parameter {key!r} has shape {arrays[key].shape}, expected {tuple(expected.shape)}")
        array = np.load(io.BytesIO(archive.read(entry)), allow_pickle=False)
        if array.dtype.kind != "f":
            raise ModelFileError(f"{path}: parameter {key!r} has dtype {array.dtype}, expected floating point")
        if tuple(array.shape) != tuple(expected.shape):
            raise ModelFileError(
                f"{path}: parameter {key!r} has shape {array.shape}, expected {tuple(expected.shape)}")
        state[key] = torch.from_numpy(array).to(expected.dtype)
    return state


def _parameter_problem(model: SPNModule) -> str | None:
    """What makes the parameters of ``model`` unusable, or None: NaN or +inf anywhere, -inf outside log-weights,
    negative raw weights, a Gaussian log standard deviation whose exponential is 0 or infinite in the model's dtype,
    a partition function that is zero or not finite, or a log-likelihood of the all-missing row that is not finite
    (it is 0 for every usable model)."""
    weights = {id(parameter) for parameter in model.sum_weight_parameters()}
    for name, parameter in model.named_parameters():
        values = parameter.detach()
        if bool(torch.isnan(values).any()) or bool((values == math.inf).any()):
            return f"parameter {name!r} holds NaN or +inf values"
        if id(parameter) in weights:
            if model.parametrisation == "raw" and bool((values < 0).any()):
                return f"parameter {name!r} holds negative weights (raw weights must be >= 0)"
        elif bool((values == -math.inf).any()):
            return f"parameter {name!r} holds -inf values"
        if name.rsplit(".", 1)[-1] == "log_std" and values.numel():
            std = torch.exp(values)
            if not bool(((std > 0) & torch.isfinite(std)).all()):
                low, high = float(values.min()), float(values.max())
                return (f"parameter {name!r} holds Gaussian log standard deviations from {low} to {high}, whose "
                        f"standard deviation is 0 or infinite in {values.dtype}")
    with torch.no_grad():
        log_partition = float(model.log_partition())
        if not math.isfinite(log_partition):
            return (f"its log partition function is {log_partition} (a sum node whose weights are all zero, or "
                    "parameters that overflow)")
        missing = float(model.log_likelihood(torch.full((1, model.num_vars), math.nan, dtype=model.dtype))[0])
    if not math.isfinite(missing):
        return f"the log-likelihood of a row of missing values is {missing}, not 0"
    return None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_HEADER_FIELDS: dict[str, Callable[[Any], bool]] = {"dtype": lambda value: value in _DTYPES}
_COMPILED_FIELDS: dict[str, Callable[[Any], bool]] = {
    "weights": lambda value: value in WEIGHT_PARAMETRISATIONS,
    "floor": lambda value: is_number(value) and in_float_range(value) and math.isfinite(value) and value >= 0,
    "num_vars": lambda value: _is_int(value) and value >= 1,
    "fast": lambda value: isinstance(value, bool),
    "structure": lambda value: isinstance(value, dict),
}
