"""Test log-likelihoods of ``overspn train`` with default settings on the standard binary benchmarks, over seeds.

Runs ``overspn train --dataset NAME --seed S --time-budget T --threads 1`` for every data set and seed (``--jobs``
runs at a time), each in its own folder under ``--runs``; a run that already finished is read back, an interrupted
one resumes from its checkpoint. Writes the table (mean +- standard deviation over seeds of the test log-likelihood,
with the training time and size, next to the published LearnSPN, RAT-SPN and EinsumNetwork results and the best
published one) to ``results/benchmark_table.json`` (``--out benchmarks/results/benchmark_table.json`` replaces the
tracked table) and prints it as markdown.

    OVERSPN_DATA=../shared/datasets python benchmarks/table_benchmarks.py [--seeds 0 1 2] [--time-budget 240]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from overspn.atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
# published test log-likelihoods (nats): LearnSPN, RAT-SPN, EinsumNetworks, best published
PUBLISHED = {
    "nltcs": (-6.11, -6.01, -6.02, -5.99),
    "plants": (-12.98, -13.44, -13.68, -12.54),
    "baudio": (-40.50, -39.96, -39.88, -39.77),
    "jester": (-53.48, -52.97, -52.56, -52.46),
    "bnetflix": (-57.33, -56.85, -56.54, -56.28),
}


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.runs) / name / f"seed{seed}"
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        command = [sys.executable, "-m", "overspn.cli", "train", "--dataset", name, "--seed", str(seed),
                   "--time-budget", str(args.time_budget), "--threads", str(args.threads), "--out", str(out),
                   "--quiet", *args.extra]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"{name} seed {seed}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(metrics_path.read_text())


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--time-budget", type=float, default=240.0, help="seconds per run (default: 240)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    parser.add_argument("--runs", default=str(REPO / "results" / "benchmark_runs"), help="folder of the runs")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmark_table.json"),
                        help="the table as JSON (default: results/benchmark_table.json; the tracked table is "
                             "benchmarks/results/benchmark_table.json, replaced only when given as --out)")
    parser.add_argument("extra", nargs="*", help="further options for overspn train, after --")
    args = parser.parse_args()
    unknown = [name for name in args.datasets if name not in PUBLISHED]
    if unknown:
        parser.error(f"no published results for {', '.join(unknown)}; choose from {', '.join(PUBLISHED)}")
    if not os.environ.get("OVERSPN_DATA") and (REPO.parent / "shared" / "datasets").is_dir():
        os.environ["OVERSPN_DATA"] = str(REPO.parent / "shared" / "datasets")

    jobs = [(name, seed) for name in args.datasets for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(job[0], job[1], args), jobs))
    rows = []
    for name in args.datasets:
        runs = [metrics for (run_name, _), metrics in zip(jobs, results) if run_name == name]
        learnspn, ratspn, einet, best = PUBLISHED[name]
        rows.append({
            "dataset": name,
            "test_llh": summarise([run["test_llh"] for run in runs]),
            "valid_llh": summarise([run["valid_llh"] for run in runs]),
            "seconds": summarise([run["seconds"] for run in runs]),
            "cpu_seconds": summarise([run["cpu_seconds"] for run in runs]),
            "epochs": summarise([run["epochs"] for run in runs]),
            "num_params": runs[0]["num_params"],
            "structure": runs[0]["structure"],
            "per_seed_test_llh": [run["test_llh"] for run in runs],
            "published": {"learnspn": learnspn, "ratspn": ratspn, "einet": einet, "best": best},
        })
    atomic_write_json(args.out, {
        "protocol": {"command": "overspn train --dataset NAME --seed S --time-budget T --threads N",
                     "time_budget": args.time_budget, "threads": args.threads, "jobs": args.jobs,
                     "seeds": args.seeds, "extra_options": args.extra,
                     "note": "default settings otherwise; test log-likelihood of the parameters with the best "
                             "validation log-likelihood"},
        "rows": rows,
    })
    print("| data set | overspn (mean ± std) | seconds (CPU) | epochs | parameters | LearnSPN | RAT-SPN | EiNet | "
          "best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        published = row["published"]
        print(f"| {row['dataset']} | {row['test_llh']['mean']:.2f} ± {row['test_llh']['std']:.2f} | "
              f"{row['seconds']['mean']:.0f} ({row['cpu_seconds']['mean']:.0f}) | {row['epochs']['mean']:.0f} | "
              f"{row['num_params']:,} | "
              f"{published['learnspn']:.2f} | {published['ratspn']:.2f} | {published['einet']:.2f} | "
              f"{published['best']:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
