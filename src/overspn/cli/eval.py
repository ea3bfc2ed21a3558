"""``overspn eval MODEL``: log-likelihoods of data under a saved model; rows with missing values get marginals."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.atomic import atomic_write_json
from overspn.cli.argtypes import output_path, positive_int
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
        "eval", help="log-likelihood of data under a saved model",
        description="Evaluate a saved model on a CSV file or a benchmark split: the mean log-likelihood (nats per "
                    "row) and, with --per-row, every row's value. Missing entries are marginalised, so a row with "
                    "missing values gets the log of its marginal probability.")
    add_model_argument(parser)
    add_data_arguments(parser)
    parser.add_argument("--out", type=output_path, metavar="FILE",
                        help="the summary as JSON (default: results/eval/MODEL-DATA.json, MODEL the model file's "
                             "name or folder, DATA the CSV file's stem or DATASET-SPLIT)")
    parser.add_argument("--per-row", type=Path, metavar="FILE",
                        help="write every row's log-likelihood as CSV (default: not written)")
    parser.add_argument("--batch-size", type=positive_int, default=10_000, help="rows evaluated at once")
    add_threads(parser, default=None)
    add_quiet(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    model = read_model(args.model)
    rows, source = read_rows(args, model)
    values = []
    with torch.no_grad():
        for start in range(0, len(rows), max(1, args.batch_size)):
            values.append(model.log_likelihood(rows[start:start + args.batch_size]).double().cpu().numpy())
    per_row = np.concatenate(values) if values else np.zeros(0)
    missing = np.isnan(rows).any(axis=1)
    summary: dict[str, Any] = {
        "model": str(args.model), "data": source, "rows": int(len(rows)),
        "rows_with_missing_values": int(missing.sum()),
        "mean_log_likelihood": float(per_row.mean()) if len(per_row) else None,
        "std_log_likelihood": float(per_row.std()) if len(per_row) else None,
        "mean_log_likelihood_complete_rows": float(per_row[~missing].mean()) if (~missing).any() else None,
        "nats_per_variable": float(per_row.mean() / model.num_vars) if len(per_row) else None,
    }
    out = args.out if args.out is not None else default_file("eval", model_name(args.model), data_name(args),
                                                              suffix=".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, summary)
    if args.per_row is not None:
        write_table(args.per_row, per_row[:, None], header=["log_likelihood"])
    if not args.quiet:
        mean = summary["mean_log_likelihood"]
        shown = "n/a" if mean is None or not math.isfinite(mean) else f"{mean:.4f}"
        print(f"{source}: {len(rows)} rows ({int(missing.sum())} with missing values), mean log-likelihood "
              f"{shown} nats")
        for path in (out, args.per_row):
            if path is not None:
                print(f"wrote {path}")
    return 0
