"""``overspn sample MODEL -n N``: draw rows from a saved model, optionally conditioned on evidence."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from overspn.cli.argtypes import output_path, positive_int
from overspn.cli.model_io import add_model_argument, default_file, model_name, read_model, write_table
from overspn.cli.options import add_quiet, add_seed, add_threads, set_threads
from overspn.data import load_csv
from overspn.errors import ConfigurationError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw samples from a saved model",
        description="Draw N rows by ancestral sampling. With --evidence, a CSV of one row (the same evidence for "
                    "every sample) or of N rows: its non-empty fields are kept and the empty ones drawn from the "
                    "conditional distribution.")
    add_model_argument(parser)
    parser.add_argument("-n", "--num-samples", type=positive_int, required=True, help="number of rows to draw")
    parser.add_argument("--evidence", type=Path, metavar="FILE",
                        help="CSV of 1 or N rows; empty fields are drawn (default: none, unconditional samples)")
    add_seed(parser)
    parser.add_argument("--out", type=output_path, metavar="FILE",
                        help="CSV file to write the samples to (default: results/sample/MODEL-nN-seedS.csv)")
    add_threads(parser, default=None)
    add_quiet(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    model = read_model(args.model)
    evidence = None
    if args.evidence is not None:
        evidence = load_csv(args.evidence, allow_missing=True)
        if evidence.shape[0] not in (1, args.num_samples):
            raise ConfigurationError(f"{args.evidence} has {evidence.shape[0]} rows; give 1 row or "
                                     f"--num-samples ({args.num_samples}) rows")
        if evidence.shape[1] != model.num_vars:
            raise ConfigurationError(f"{args.evidence} has {evidence.shape[1]} columns but the model has "
                                     f"{model.num_vars} variables")
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        samples = model.sample(args.num_samples, evidence, generator=generator)
    out = args.out
    if out is None:
        words = [model_name(args.model), f"n{args.num_samples}", f"seed{args.seed}"]
        out = default_file("sample", *words, *([args.evidence.stem] if args.evidence is not None else []),
                           suffix=".csv")
    write_table(out, samples.double().cpu().numpy())
    if not args.quiet:
        print(f"drew {args.num_samples} samples of {model.num_vars} variables (seed {args.seed})")
        print(f"wrote {out}")
    return 0



