"""Time per training epoch of a RAT-SPN as its parameters grow (10^4 -> 10^6) and as the batch grows.

Data: 2,000 random binary rows over 100 variables (the width of baudio, jester and bnetflix). Model: depth 3,
10 repetitions, ``K`` sums and ``K`` inputs per region, Bernoulli leaves, softmax weights, float32; an epoch is
shuffling plus one Adam step per batch (forward, backward, step). For the two smallest sizes the same structure
compiled by the generic engine (``osp.compile(model.to_structure())``) is timed as a baseline, after checking that
both give the same log-likelihoods. Medians over ``--repeats`` epochs after one warm-up epoch, in processor and
wall-clock seconds, are printed and written to ``benchmarks/results/scale.json``, with ratios generic / tensorised
(processor time).

    python benchmarks/bench_scale.py [--threads 1] [--repeats 3] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
from pathlib import Path

import numpy as np
import torch

from overspn.atomic import atomic_write_json
from overspn.engine.rat import RatConfig, RatSPN
from overspn.learn.fit import fit

REPO = Path(__file__).resolve().parents[1]
NUM_VARS, ROWS, DEPTH, REPETITIONS = 100, 2000, 3, 10
SIZES = (5, 10, 15, 20, 25)  # sums = inputs per region: about 1.3e4 to 9.7e5 parameters
BATCH_SIZES = (10, 50, 100, 500, 1000)
GENERIC_SIZES = (5, 10)


def epoch_seconds(model: torch.nn.Module, data: torch.Tensor, batch_size: int,
                  repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and processor seconds of ``repeats`` epochs of Adam on ``data`` (:func:`overspn.fit`), after one
    warm-up epoch.

    Processor time is the fairer measure on a machine shared with other jobs; on an idle one the two agree.
    """
    history = fit(model, data, optimizer=torch.optim.Adam(model.parameters(), lr=0.01), batch_size=batch_size,
                  epochs=repeats + 1, seed=0)
    entries = history.entries[1:]  # entry 0 evaluates the initial model; epoch 1 is the warm-up
    times = [b["seconds"] - a["seconds"] for a, b in zip(entries, entries[1:])]
    cpu_times = [b["cpu_seconds"] - a["cpu_seconds"] for a, b in zip(entries, entries[1:])]
    return times, cpu_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = torch.from_numpy((np.random.default_rng(0).random((ROWS, NUM_VARS)) < 0.3).astype(np.float32))

    by_size = []
    for size in SIZES:
        model = RatSPN(RatConfig(NUM_VARS, DEPTH, REPETITIONS, size, size, seed=0))
        generic = model.to_compiled() if size in GENERIC_SIZES else None
        if generic is not None:
            with torch.no_grad():
                difference = float((generic.log_likelihood(data[:200]) - model.log_likelihood(data[:200])).abs().max())
            if difference > 1e-3:
                raise SystemExit(f"generic and tensorised paths disagree by {difference} at size {size}")
        times, cpu_times = epoch_seconds(model, data, 100, args.repeats)
        entry = {"sums": size, "inputs": size, "num_params": model.num_parameters(),
                 "epoch_seconds_median": statistics.median(times), "epoch_seconds": times,
                 "epoch_cpu_seconds_median": statistics.median(cpu_times),
                 "max_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if generic is not None:
            generic_times, generic_cpu_times = epoch_seconds(generic, data, 100, args.repeats)
            entry["generic_epoch_seconds_median"] = statistics.median(generic_times)
            entry["generic_epoch_cpu_seconds_median"] = statistics.median(generic_cpu_times)
            entry["generic_over_tensorised"] = (entry["generic_epoch_cpu_seconds_median"]
                                                / entry["epoch_cpu_seconds_median"])
        by_size.append(entry)
        ratio = (f"; generic engine {entry['generic_epoch_cpu_seconds_median']:.3f} CPU s "
                 f"({entry['generic_over_tensorised']:.1f}x)" if "generic_over_tensorised" in entry else "")
        print(f"K = I = {size:3d}: {entry['num_params']:9d} parameters, {entry['epoch_cpu_seconds_median']:.3f} CPU s "
              f"({entry['epoch_seconds_median']:.3f} s wall) per epoch of {ROWS} rows (batch 100){ratio}, "
              f"peak memory so far {entry['max_rss_mb_so_far']:.0f} MB", flush=True)

    by_batch = []
    model = RatSPN(RatConfig(NUM_VARS, DEPTH, REPETITIONS, 10, 10, seed=0))
    for batch_size in BATCH_SIZES:
        times, cpu_times = epoch_seconds(model, data, batch_size, args.repeats)
        median = statistics.median(cpu_times)
        by_batch.append({"batch_size": batch_size, "epoch_cpu_seconds_median": median,
                         "epoch_seconds_median": statistics.median(times), "epoch_seconds": times,
                         "rows_per_cpu_second": ROWS / median})
        print(f"batch {batch_size:5d}: {median:.3f} CPU s per epoch, {ROWS / median:,.0f} rows per CPU second "
              f"({model.num_parameters()} parameters)", flush=True)

    atomic_write_json(args.out, {
        "benchmark": "RAT-SPN epoch time against parameters and batch size",
        "data": {"rows": ROWS, "variables": NUM_VARS, "kind": "random binary"},
        "structure": {"depth": DEPTH, "repetitions": REPETITIONS, "leaf": "bernoulli", "weights": "softmax",
                      "dtype": "float32"},
        "optimizer": "adam", "threads": args.threads, "repeats": args.repeats,
        "load_average_at_end": os.getloadavg(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "by_size": by_size, "by_batch_size": by_batch,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
