"""``overspn reproduce``: the paper's experiment (depth 1, 2, 3 mixtures trained by gradient ascent) end to end.

Writes to ``--out`` (default ``results/reproduce/PROTOCOL``, or ``results/reproduce/PROTOCOL-LEAF`` for other leaves)
``curves.csv``, ``summary.json`` and ``NAME.png`` per data set, all atomically. Finished runs are kept under
``runs/`` and a run in progress is checkpointed every ``--checkpoint-every`` iterations, so a killed command, given
again, resumes and ends with the same curves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from overspn.cli.argtypes import finite_float, non_negative_float, non_negative_int, positive_float, positive_int
from overspn.cli.options import DatasetList, threads
from overspn.errors import ConfigurationError
from overspn.studies.depth import (
    BRANCHINGS,
    GAUSSIAN_INITS,
    METRICS,
    PROTOCOLS,
    format_summary,
    protocol_study,
    run_study,
    write_outputs,
)
from overspn.studies.sweep import format_sweep, perturbation_label, write_sweep
from overspn.symbolic.transforms import MIXTURE_LEAVES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="the paper's depth study: curves, summary and figures",
        description="Train the paper's K = 8 mixture with its root overparametrized into 1, 2 and 3 sum layers by "
                    "gradient ascent and record train/test log-likelihood per iteration. 'paper': NLTCS, raw "
                    "weights from 1e-4, lr 0.01, 500 iterations, 2 runs. 'log': log-weights, lr 0.1, 1000 "
                    "iterations, 5 runs, NLTCS, Plants, Audio. Options override the protocol's settings.")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper", help="default: paper")
    parser.add_argument("--dataset", action=DatasetList, metavar="NAME",
                        help="data set (repeatable): a binary benchmark (e.g. nltcs), a scikit-learn set (wine, "
                             "breast_cancer) or NAME/NAME.train.data under --data-dir; default: the protocol's "
                             "(wine and breast_cancer with --leaf gaussian)")
    parser.add_argument("--depth", action="append", type=int, choices=sorted(BRANCHINGS), metavar="D",
                        help="depth to run (repeatable; 1, 2, 3 = branchings (8), (2,4), (2,2,2)); default: all")
    parser.add_argument("--runs", type=_run_counts, metavar="N[,N,N]",
                        help="runs per depth (default: the protocol's, paper 2, log 5), or one count per depth in "
                             "ascending order of depth, e.g. 60,20,20")
    parser.add_argument("--iterations", type=positive_int, help="gradient ascent updates (default: the "
                        "protocol's, paper 500, log 1000)")
    parser.add_argument("--lr", type=positive_float, help="learning rate (default: the protocol's, paper 0.01, "
                                                                  "log 0.1)")
    parser.add_argument("--seed", type=non_negative_int, help="run r perturbs its leaves with seed SEED + r "
                                                              "(default 0)")
    parser.add_argument("--leaf", choices=MIXTURE_LEAVES, help="leaf family (default indicator, the paper's)")
    parser.add_argument("--perturbation", type=_perturbations, metavar="P[,P...]",
                        help="relative perturbation of the initial leaf parameters that breaks the symmetry of the "
                             "components (default 1e-12; 0 keeps all components identical; 1e-4 with --leaf "
                             "gaussian). A comma-separated list runs a sweep: one study per value under "
                             "OUT/pVALUE, then sweep.json and sweep.png in OUT")
    parser.add_argument("--gaussian-init", choices=GAUSSIAN_INITS,
                        help="how Gaussian components start (with --leaf gaussian; default kmeans: k-means clusters "
                             "of the training rows, jittered by the perturbation; jitter: means and log-stds "
                             "jittered by the perturbation around N(0, 1); perturb: means only)")
    parser.add_argument("--target", type=finite_float,
                        help="log-likelihood level a run must reach (default -7.10 for nltcs; otherwise the best "
                             "final mean over depths minus 0.05 nats)")
    parser.add_argument("--metric", choices=METRICS, default="train",
                        help="curve compared with --target (default train)")
    parser.add_argument("--budget", type=positive_int,
                        help="count only the first BUDGET iterations when measuring iterations to target "
                             "(default: all)")
    parser.add_argument("--max-rows", type=positive_int, help="use only the first rows of train and test "
                        "(quick runs; default: all rows)")
    parser.add_argument("--data-dir", type=Path, help="folder of NAME/NAME.{train,valid,test}.data (default "
                                                      "$OVERSPN_DATA)")
    parser.add_argument("--out", type=Path, help="output folder (default results/reproduce/PROTOCOL, or "
                                                 "results/reproduce/PROTOCOL-LEAF "
                                                 "for leaves other than indicators)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50,
                        help="iterations between checkpoints of a run in progress (default 50)")
    parser.add_argument("--threads", type=threads, default=1,
                        help="torch threads (default 1: the models are small, and a fixed count keeps the curves "
                             "bit-identical between an interrupted and an uninterrupted run)")
    parser.add_argument("--quiet", dest="no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(handler=handle)


def _run_counts(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def _perturbations(text: str) -> tuple[float, ...]:
    values = tuple(non_negative_float(part) for part in text.split(","))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct perturbations, got {text!r}")
    return values


def handle(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    depths = tuple(sorted(set(args.depth))) if args.depth else None
    runs = runs_by_depth = None
    if args.runs is not None:
        if len(args.runs) == 1:
            runs = args.runs[0]
        else:
            count = len(depths or PROTOCOLS[args.protocol].depths)
            if len(args.runs) != count:
                raise ConfigurationError(f"--runs gives {len(args.runs)} counts for {count} depths")
            runs, runs_by_depth = max(args.runs), args.runs
    perturbations = args.perturbation or (None,)
    studies = [protocol_study(
        args.protocol, datasets=args.dataset, depths=depths, runs=runs, runs_by_depth=runs_by_depth,
        iterations=args.iterations, lr=args.lr, seed=args.seed, leaf=args.leaf, perturbation=perturbation,
        gaussian_init=args.gaussian_init, max_rows=args.max_rows, checkpoint_every=args.checkpoint_every)
        for perturbation in perturbations]
    study = studies[0]
    default_out = args.protocol if study.leaf == "indicator" else f"{args.protocol}-{study.leaf}"
    out = args.out if args.out is not None else Path("results") / "reproduce" / default_out
    sweep = len(studies) > 1
    started = time.perf_counter()
    outcomes = []
    for study in studies:
        folder = out / perturbation_label(study.perturbation) if sweep else out
        results = run_study(study, folder, args.data_dir, progress=not args.no_progress, log=print)
        summary = write_outputs(study, results, folder, args.target, args.metric, args.budget)
        outcomes.append((study, results, summary))
        trained = sum(r.seconds for r in results)
        print(f"{study.protocol} protocol, perturbation {study.perturbation:g}: {len(results)} runs of "
              f"{study.iterations} iterations; training time {trained:.1f} s (sum over runs)")
        for line in format_summary(summary):
            print(line)
        print(f"wrote {folder / 'curves.csv'}, {folder / 'summary.json'} and "
              f"{', '.join(str(folder / f'{name}.png') for name in study.datasets)}")
    if sweep:
        sweep_summary = write_sweep(outcomes, out, args.target, args.metric, args.budget)
        for line in format_sweep(sweep_summary):
            print(line)
        print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    print(f"command {time.perf_counter() - started:.1f} s")
    return 0
