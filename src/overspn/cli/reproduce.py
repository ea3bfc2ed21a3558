"""``overspn reproduce``: the paper's experiment (depth 1, 2, 3 mixtures trained by gradient ascent) end to end.

Writes to ``--out`` (default ``results/PROTOCOL``, or ``results/PROTOCOL-LEAF`` for leaves other than indicators)
``curves.csv``, ``summary.json`` and ``NAME.png`` per data set, all atomically. Finished runs are kept under
``runs/`` and a run in progress is checkpointed every ``--checkpoint-every`` iterations, so a killed command, given
again, resumes and ends with the same curves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from overspn.cli.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from overspn.studies.depth import BRANCHINGS, PROTOCOLS, protocol_study, run_study, write_outputs
from overspn.symbolic.transforms import MIXTURE_LEAVES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="the paper's depth study: curves, summary and figures",
        description="Train the paper's K = 8 mixture with its root overparametrized into 1, 2 and 3 sum layers by "
                    "gradient ascent and record train/test log-likelihood per iteration. 'paper': NLTCS, raw "
                    "weights from 1e-4, lr 0.01, 500 iterations, 2 runs. 'log': log-weights, lr 0.1, 1000 "
                    "iterations, 5 runs, NLTCS, Plants, Audio. Options override the protocol's settings.")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper", help="default: paper")
    parser.add_argument("--dataset", action="append", metavar="NAME",
                        help="data set (repeatable): a binary benchmark (e.g. nltcs), a scikit-learn set (wine, "
                             "breast_cancer) or NAME/NAME.train.data under --data-dir; default: the protocol's "
                             "(wine and breast_cancer with --leaf gaussian)")
    parser.add_argument("--depth", action="append", type=int, choices=sorted(BRANCHINGS), metavar="D",
                        help="depth to run (repeatable; 1, 2, 3 = branchings (8), (2,4), (2,2,2)); default: all")
    parser.add_argument("--runs", type=positive_int, help="runs per depth (paper 2, log 5)")
    parser.add_argument("--iterations", type=positive_int, help="gradient ascent updates (paper 500, log 1000)")
    parser.add_argument("--lr", type=positive_float, help="learning rate (paper 0.01, log 0.1)")
    parser.add_argument("--seed", type=non_negative_int, help="run r perturbs its leaves with seed SEED + r "
                                                              "(default 0)")
    parser.add_argument("--leaf", choices=MIXTURE_LEAVES, help="leaf family (default indicator, the paper's)")
    parser.add_argument("--perturbation", type=non_negative_float,
                        help="relative perturbation of the initial leaf parameters that breaks the symmetry of the "
                             "components (default 1e-12; 0 keeps all components identical)")
    parser.add_argument("--max-rows", type=positive_int, help="use only the first rows of train and test (quick runs)")
    parser.add_argument("--data-dir", type=Path, help="folder of NAME/NAME.{train,valid,test}.data (default "
                                                      "$OVERSPN_DATA)")
    parser.add_argument("--out", type=Path, help="output folder (default results/PROTOCOL, or results/PROTOCOL-LEAF "
                                                 "for leaves other than indicators)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50,
                        help="iterations between checkpoints of a run in progress (default 50)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: the models are small, and a fixed count keeps the curves "
                             "bit-identical between an interrupted and an uninterrupted run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    study = protocol_study(
        args.protocol, datasets=args.dataset, depths=tuple(sorted(set(args.depth))) if args.depth else None,
        runs=args.runs, iterations=args.iterations, lr=args.lr, seed=args.seed, leaf=args.leaf,
        perturbation=args.perturbation, max_rows=args.max_rows, checkpoint_every=args.checkpoint_every)
    default_out = args.protocol if study.leaf == "indicator" else f"{args.protocol}-{study.leaf}"
    out = args.out if args.out is not None else Path("results") / default_out
    started = time.perf_counter()
    results = run_study(study, out, args.data_dir, progress=not args.no_progress, log=print)
    summary = write_outputs(study, results, out)
    elapsed = time.perf_counter() - started
    trained = sum(r.seconds for r in results)
    print(f"{study.protocol} protocol: {len(results)} runs of {study.iterations} iterations; training time "
          f"{trained:.1f} s (sum over runs), command {elapsed:.1f} s")
    for name, entry in summary["datasets"].items():
        print(f"{name}: initial train log-likelihood {entry['initial_train_llh']:.4f}; plateau target "
              f"(mean curve) {entry['mean_curve_target']:.4f}")
        for depth, values in entry["depths"].items():
            final = values["final_train_llh"]
            test = values["final_test_llh"]
            reach = values["iterations_to_target"]
            speed = values["speedup_vs_depth1"]["mean_curve"]
            test_text = f", test {test['mean']:.4f} ± {test['std']:.4f}" if test else ""
            print(f"  depth {depth} {tuple(values['branching'])}: final train {final['mean']:.4f} ± "
                  f"{final['std']:.4f}{test_text}; iterations to target: mean curve {reach['mean_curve']}, best run "
                  f"{reach['best_run']}" + (f"; speed-up vs depth 1: {speed:.2f}" if speed is not None else ""))
    print(f"wrote {out / 'curves.csv'}, {out / 'summary.json'} and "
          f"{', '.join(str(out / f'{name}.png') for name in study.datasets)}")
    return 0
