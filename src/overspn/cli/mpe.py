"""``overspn mpe MODEL --data FILE``: complete the missing entries of data with their most probable values."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from overspn.cli.model_io import add_data_arguments, add_model_argument, read_model, read_rows, write_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mpe", help="complete missing values with a saved model",
        description="Fill every missing entry (empty, '?', 'nan' or 'NA' field) with the max-product completion: "
                    "the exact most probable completion for selective models, an approximation otherwise. "
                    "Observed entries are kept.")
    add_model_argument(parser)
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write the completed rows to")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    model = read_model(args.model)
    rows, source = read_rows(args, model)
    with torch.no_grad():
        completed = model.mpe(rows).double().cpu().numpy()
    write_table(args.out, completed)
    if not args.quiet:
        filled = int((rows != rows).sum())
        print(f"{source}: completed {filled} missing entries in {len(rows)} rows")
        print(f"wrote {args.out}")
    return 0
