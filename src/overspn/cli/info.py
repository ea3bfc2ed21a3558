"""``overspn info MODEL``: what a model file holds, without training or evaluating anything."""

from __future__ import annotations

import argparse
import json
import sys

from overspn.cli.model_io import add_model_argument
from overspn.serialization import read_header


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="describe a saved model",
        description="Print a saved model's kind, size, parametrisation, dtype, file format version, and the data "
                    "and settings it was trained with (when the file records them).")
    add_model_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    parser.set_defaults(handler=handle)


def _layout(header: dict) -> dict:
    """What the model is built of: a tensorised model's configuration, a compiled structure's number of nodes (the
    column form has a letter per node, versions 1 and 2 a list of nodes), or a mixture's components."""
    if header.get("config"):
        return header["config"]
    if "components" in header:
        components = header["components"]
        return {"components": len(components), **{f"component {i} ({entry['kind']})": entry["config"]
                                                  for i, entry in enumerate(components[:1])}}
    structure = header["structure"]
    return {"nodes": len(structure["types"]) if "types" in structure else len(structure["nodes"])}


def _num_vars(header: dict) -> int:
    if "num_vars" in header:
        return header["num_vars"]
    config = header.get("config") or header["components"][0]["config"]
    return config["num_vars"]


def handle(args: argparse.Namespace) -> int:
    header = read_header(args.model)
    description = {
        "file": str(args.model),
        "kind": header["kind"] if "kind" in header else "compiled",
        "format_version": header["version"],
        "dtype": header["dtype"],
        "weights": header.get("weights"),
        "floor": header.get("floor"),
        "num_vars": _num_vars(header),
        "num_parameters": header["num_parameters"],
        "layout": _layout(header),
        "metadata": header["metadata"],
    }
    if args.json:
        json.dump(description, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for key, value in description.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, item in value.items():
                print(f"  {inner}: {item}")
        else:
            print(f"{key}: {value}")
    return 0
