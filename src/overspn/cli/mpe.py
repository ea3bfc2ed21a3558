"""``overspn mpe MODEL --data FILE``: complete the missing entries of data with their most probable values."""

from __future__ import annotations

import argparse

import torch

from overspn.cli.argtypes import output_path
from overspn.cli.model_io import (
    add_data_arguments,
    add_model_argument,
    data_name,
    default_file,
    model_name,
    read_model,
    read_rows,
    write_table,
)
from overspn.cli.options import add_quiet, add_threads, set_threads


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mpe", help="complete missing values with a saved model",
        description="Fill every missing entry (empty, '?', 'nan' or 'NA' field) with the max-product completion: "
                    "the exact most probable completion for selective models, an approximation otherwise. "
                    "Observed entries are kept.")
    add_model_argument(parser)
    add_data_arguments(parser)
    parser.add_argument("--out", type=output_path, metavar="FILE",
                        help="CSV file to write the completed rows to (default: results/mpe/MODEL-DATA.csv)")
    add_threads(parser, default=None)
    add_quiet(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    model = read_model(args.model)
    rows, source = read_rows(args, model)
    with torch.no_grad():
        completed = model.mpe(rows).double().cpu().numpy()
    out = args.out if args.out is not None else default_file("mpe", model_name(args.model), data_name(args),
                                                              suffix=".csv")
    write_table(out, completed)
    if not args.quiet:
        filled = int((rows != rows).sum())
        print(f"{source}: completed {filled} missing entries in {len(rows)} rows")
        print(f"wrote {out}")
    return 0
