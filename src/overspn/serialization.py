"""Saving and loading compiled models without pickle.

A model file is a zip archive holding ``model.json`` (format name, version, compile options and the structure as a
list of nodes in topological order) and one ``.npy`` array per parameter, read with ``allow_pickle=False``. Loading
therefore never executes code from the file; anything unexpected raises :class:`ModelFileError`.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_bytes
from .compiled import CompiledSPN, compile
from .errors import ModelFileError, OverspnError
from .structure import Bernoulli, Categorical, Gaussian, Indicator, Node, Product, Sum, topological_order

__all__ = ["save", "load", "structure_to_dict", "structure_from_dict"]

FORMAT = "overspn-model"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def structure_to_dict(root: Node) -> dict[str, Any]:
    """A JSON-compatible description of a structure (shared nodes are stored once)."""
    order = topological_order(root)
    number = {node: i for i, node in enumerate(order)}
    nodes = []
    for node in order:
        entry: dict[str, Any] = {"type": type(node).__name__}
        if node.name is not None:
            entry["name"] = node.name
        if isinstance(node, (Sum, Product)):
            entry["children"] = [number[c] for c in node.children]
        if isinstance(node, Sum):
            entry["weights"] = node.weights.tolist()
        elif isinstance(node, Indicator):
            entry.update(var=node.var, value=node.value)
        elif isinstance(node, Bernoulli):
            entry.update(var=node.var, p=node.p)
        elif isinstance(node, Categorical):
            entry.update(var=node.var, probs=node.probs.tolist())
        elif isinstance(node, Gaussian):
            entry.update(var=node.var, mean=node.mean, std=node.std)
        nodes.append(entry)
    return {"nodes": nodes}


def structure_from_dict(description: dict[str, Any]) -> Node:
    """Rebuild a structure from :func:`structure_to_dict`'s output; raises ModelFileError when malformed."""
    try:
        entries = description["nodes"]
        built: list[Node] = []
        for number, entry in enumerate(entries):
            kind, name = entry["type"], entry.get("name")
            if kind in ("Sum", "Product"):
                children = []
                for child in entry["children"]:
                    if not isinstance(child, int) or not 0 <= child < number:
                        raise ModelFileError(f"node {number} refers to child {child!r}, which is not an earlier node")
                    children.append(built[child])
                node: Node = (Sum(children, entry["weights"], name=name) if kind == "Sum"
                              else Product(children, name=name))
            elif kind == "Indicator":
                node = Indicator(entry["var"], entry["value"], name=name)
            elif kind == "Bernoulli":
                node = Bernoulli(entry["var"], entry["p"], name=name)
            elif kind == "Categorical":
                node = Categorical(entry["var"], entry["probs"], name=name)
            elif kind == "Gaussian":
                node = Gaussian(entry["var"], entry["mean"], entry["std"], name=name)
            else:
                raise ModelFileError(f"node {number} has unknown type {kind!r}")
            built.append(node)
    except (KeyError, TypeError, IndexError) as error:
        raise ModelFileError(f"malformed structure description: {error!r}") from error
    if not built:
        raise ModelFileError("the structure description has no nodes")
    return built[-1]


def save(model: CompiledSPN, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (structure, options and exact parameter values) to ``path`` atomically."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "weights": model.parametrisation,
        "floor": model.floor,
        "dtype": str(model.dtype).removeprefix("torch."),
        "num_vars": model.num_vars,
        "fast": model.fast,
        "structure": structure_to_dict(model.to_structure()),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.json", json.dumps(header))
        for key, tensor in model.state_dict().items():
            array = io.BytesIO()
            np.save(array, tensor.detach().cpu().numpy(), allow_pickle=False)
            archive.writestr(f"tensors/{key}.npy", array.getvalue())
    atomic_write_bytes(Path(path), buffer.getvalue())


def load(path: str | os.PathLike[str]) -> CompiledSPN:
    """Read a model written by :func:`save`. Never unpickles; raises ModelFileError for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "model.json" not in names:
                raise ModelFileError(f"{path}: not an overspn model file (no model.json inside)")
            header = json.loads(archive.read("model.json"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ModelFileError(f"{path}: not an overspn model file (format {header.get('format')!r})"
                                     if isinstance(header, dict) else f"{path}: not an overspn model file")
            if header.get("version") != VERSION:
                raise ModelFileError(
                    f"{path}: model file version {header.get('version')!r} is not supported (expected {VERSION})")
            if header.get("dtype") not in _DTYPES:
                raise ModelFileError(f"{path}: unknown dtype {header.get('dtype')!r}")
            root = structure_from_dict(header["structure"])
            model = compile(root, header["weights"], floor=header["floor"], dtype=_DTYPES[header["dtype"]],
                            num_vars=header["num_vars"], fast=header["fast"])
            state = {}
            for key, expected in model.state_dict().items():
                entry = f"tensors/{key}.npy"
                if entry not in names:
                    raise ModelFileError(f"{path}: parameter {key!r} is missing")
                array = np.load(io.BytesIO(archive.read(entry)), allow_pickle=False)
                if tuple(array.shape) != tuple(expected.shape):
                    raise ModelFileError(
                        f"{path}: parameter {key!r} has shape {array.shape}, expected {tuple(expected.shape)}")
                state[key] = torch.from_numpy(array).to(expected.dtype)
            model.load_state_dict(state)
            return model
    except ModelFileError:
        raise
    except OverspnError as error:
        raise ModelFileError(f"{path}: the stored structure is invalid: {error}") from error
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError, OSError,
            EOFError) as error:
        raise ModelFileError(f"{path}: corrupted or truncated model file ({error})") from error
