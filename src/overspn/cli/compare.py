"""``overspn compare``: implicit acceleration by depth against explicit momentum, Adam and depth as an optimizer.

The study (methods, protocols, target, interleaved timing, stored runs) is :mod:`overspn.studies.optimizer_comparison`;
this command checks the arguments, runs it for every protocol and data set asked for, and writes the summary to
``comparison.csv``, ``comparison.json`` and ``comparison.md`` with one figure per protocol and data set. Each finished
run is stored under ``OUT/runs`` so that an interrupted comparison resumes where it stopped.
"""
from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overspn.atomic import atomic_write_json, atomic_write_text
from overspn.cli.argtypes import finite_float, positive_int
from overspn.cli.options import (
    add_data_dir,
    add_datasets,
    add_quiet,
    add_restart,
    add_seed,
    add_threads,
    default_out,
    set_threads,
)
from overspn.data import load_dataset
from overspn.errors import ConfigurationError
from overspn.studies.optimizer_comparison import (
    METHODS,
    PROTOCOLS,
    cached_runs,
    cached_step_seconds,
    comparison_target,
    markdown,
    plot_curves,
    summarise,
)


def handle(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    methods = _checked_methods(args)
    out = Path(args.out) if args.out is not None else default_out(
        "compare", [args.protocol, *(args.dataset or [])], args, OUT_DEFAULTS)
    if args.restart:
        shutil.rmtree(out / "runs", ignore_errors=True)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    say(f"compare: {', '.join(methods)}; seeds {args.seed}..{args.seed + args.seeds - 1}; results in {out}")
    sections: list[dict[str, Any]] = []
    figures: list[Path] = []
    for name in protocols:
        protocol = PROTOCOLS[name]
        iterations = args.iterations if args.iterations is not None else protocol.iterations
        if iterations < 1:
            raise ConfigurationError(f"--iterations must be >= 1, got {iterations}")
        for dataset_name in tuple(args.dataset) if args.dataset else protocol.datasets:
            section, figure = _compare_on(args, out, name, dataset_name, methods, iterations, say)
            sections.append(section)
            figures.append(figure)
    table, written = _write_tables(out, sections)
    if not args.quiet:
        print(table)
        print(f"compare: {len(sections)} protocol and data set pairs, {len(methods)} methods, {args.seeds} seeds")
        for path in (*written, *figures):
            print(f"wrote {path}")
    return 0


def _checked_methods(args: argparse.Namespace) -> tuple[str, ...]:
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    for method in methods:
        if method not in METHODS:
            raise ConfigurationError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.timing_steps < 1 or args.timing_rounds < 1:
        raise ConfigurationError("--seeds, --timing-steps and --timing-rounds must be >= 1")
    return methods


def _compare_on(args: argparse.Namespace, out: Path, name: str, dataset_name: str, methods: tuple[str, ...],
                iterations: int, say: Callable[[str], None]) -> tuple[dict[str, Any], Path]:
    """The runs, target, timing and summary of one protocol and data set, and its figure; returns the section of
    the tables and the figure's path."""
    protocol = PROTOCOLS[name]
    dataset = load_dataset(dataset_name, args.data_dir)
    seeds = range(args.seed, args.seed + args.seeds)
    runs = cached_runs(out / "runs", name, dataset_name, protocol, dataset, methods, seeds, iterations, say)
    target = comparison_target(runs, args.target)
    step_seconds = cached_step_seconds(out / "runs" / f"{name}-{dataset_name}-timing.json", methods, protocol,
                                       dataset, args.timing_steps, args.timing_rounds, say, f"{name} {dataset_name}")
    section = {"protocol": name, "dataset": dataset_name, "target": target, "seeds": args.seeds,
               "iterations": iterations, "rows": summarise(runs, target, step_seconds)}
    figure = out / f"curves_{name}_{dataset_name}.png"
    plot_curves(figure, runs, f"{name} protocol, {dataset_name}: mean train log-likelihood over {args.seeds} seeds",
                target)
    return section, figure


def _write_tables(out: Path, sections: list[dict[str, Any]]) -> tuple[str, list[Path]]:
    """``comparison.csv``, ``.json`` and ``.md``; returns the markdown table and the paths written."""
    rows_csv = [{"protocol": section["protocol"], "dataset": section["dataset"], "target": section["target"], **row}
                for section in sections for row in section["rows"]]
    columns = list(rows_csv[0])
    lines = [",".join(columns)] + [",".join(_csv(row[c]) for c in columns) for row in rows_csv]
    atomic_write_text(out / "comparison.csv", "\n".join(lines) + "\n")
    atomic_write_json(out / "comparison.json", sections)
    table = markdown(sections)
    atomic_write_text(out / "comparison.md", table + "\n")
    return table, [out / "comparison.csv", out / "comparison.json", out / "comparison.md"]


# the options that change the results: a run that changes one of them gets its own default folder
OUT_DEFAULTS = {"iterations": None, "seeds": 5, "seed": 0, "methods": None, "target": None, "timing_steps": 20,
                "timing_rounds": 7}


def _csv(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return f'"{text}"' if "," in text else text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="depth (implicit acceleration) against momentum, Adam and the depth optimizer",
        description="Implicit acceleration by depth against explicit momentum, Adam and depth as an optimizer: every "
                    "method trains the paper's mixture of 8 products from the same start for a fixed number of "
                    "iterations; reports the iterations and seconds each needs to reach plain gradient ascent's "
                    "mean final train log-likelihood. Writes comparison.csv, comparison.json, comparison.md and one "
                    "figure per protocol and data set to --out; finished runs are kept under OUT/runs, so an "
                    "interrupted comparison resumes.")
    parser.add_argument("--protocol", choices=("paper", "log", "both"), default="paper",
                        help="paper: raw weights, lr 0.01, 500 iterations, nltcs; log: log-weights, lr 0.1, 1000 "
                             "iterations, nltcs, plants, baudio")
    add_datasets(parser, "the protocol's", alias="--datasets")
    add_data_dir(parser)
    parser.add_argument("--iterations", type=positive_int, help="iterations per run (default: the protocol's)")
    parser.add_argument("--seeds", type=positive_int, default=5, help="runs per method, seeds SEED..SEED+N-1")
    add_seed(parser, "the first seed, an integer >= 0")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--target", type=finite_float,
                        help="target train log-likelihood (default: gradient ascent's mean final value)")
    parser.add_argument("--timing-steps", type=positive_int, default=20,
                        help="steps per method and round of the timing")
    parser.add_argument("--timing-rounds", type=positive_int, default=7, help="interleaved rounds of the timing")
    add_threads(parser, default=1)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: results/compare/PROTOCOL[+DATASETS], with a short hash of other "
                             "settings that differ from the defaults)")
    add_restart(parser)
    add_quiet(parser)
    parser.set_defaults(handler=handle)
