"""Training speed of overspn's RAT-SPNs against SPFlow and cirkit on equal structures (plants, 69 binary variables).

Every library builds the same RAT-SPN: ``repetitions`` random binary trees of ``depth`` splits over the variables,
``inputs`` factorised Bernoulli/categorical input distributions per leaf region, ``sums`` sum nodes per inner region
over the cross product of the two child regions, and one root mixing the tops of all repetitions:

* overspn: :class:`overspn.rat.RatSPN`, softmax weights;
* SPFlow 1.1: ``spflow.zoo.rat.RatSPN`` with ``outer_product=True`` over a ``Bernoulli`` leaf module;
* cirkit 0.3.1: ``RandomBinaryTree`` region graph, ``build_circuit(sum_product="tucker")`` with ``CategoricalLayer``
  inputs (two categories) and softmax sum weights, compiled to torch with folding (semiring lse-sum).

The peers put one extra sum per repetition below the root (``repetitions`` more weights than overspn, whose root
mixes all cross products directly); the parameter counts are reported side by side.

Outputs are checked comparable before any timing: (1) all three give finite log-likelihoods on the same batch and
log Z = 0 (overspn's partition function, cirkit's integrated circuit, SPFlow's all-missing row); (2) with equal
parameters -- uniform sum weights and, for every variable ``d``, the same success probability ``p_d`` in every input
distribution -- every network is the fully factorised model, so all three must return exactly
``sum_d log Bernoulli(x_d; p_d)`` on the batch; this compares the libraries at equal values without relying on
their region graphs being the same random draw.

A training step is: Adam's zero_grad, the negative mean log-likelihood of a random batch, backward, Adam step (lr
0.01). Steps of the libraries are interleaved, in a fresh random order every round, so a change in the machine's
load hits all of them; each library gets ``--repeats`` timed steps after ``--warmup`` steps, or fewer (at least 3)
when its steps exceed ``--budget`` seconds for the cell. Reported per cell: median step time, 10th/90th percentiles,
samples per second (batch / median step) and an epoch estimate (median step x steps per epoch of the plants training
set), and the ratio peer / overspn (> 1: overspn faster). Two tables: parameters 10^4 -> 10^6 at batch 256 (sums =
inputs grown) and batch size 64 -> 4096 at the base model (depth 3, 10 repetitions, 10 sums, 10 inputs).

The peers live in their own environment (they are not dependencies of overspn)::

    python -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e ".[bench]"
    OVERSPN_DATA=../shared/datasets .venv-bench/bin/python benchmarks/bench_peers.py [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch
from peers import (
    BASE,
    BATCH_SIZES,
    RUNNERS,
    SCALING_BATCH,
    SCALING_WIDTHS,
    Shape,
    available_runners,
    check_comparable,
    markdown,
    time_cell,
)
from provenance import source_revision

from overspn.atomic import atomic_write_json
from overspn.data import load_dataset

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per library and cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per library and cell")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", type=int, nargs="+", default=list(SCALING_WIDTHS),
                        help="sums = inputs per region for the parameter-scaling table")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--only", nargs="+", choices=list(RUNNERS), help="restrict to these libraries")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "peers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names, missing = available_runners()
    if args.only:
        names = [n for n in names if n in args.only or n == "overspn"]
    for name, reason in missing.items():
        print(f"skipping {name}: not importable ({reason}); install the bench extra in a separate environment")
    data = torch.from_numpy(load_dataset("plants").train).float()
    base = Shape(data.shape[1], **BASE)

    checks = check_comparable([RUNNERS[name](base, args.seed) for name in names], data[:512])
    print("comparable outputs:", {n: checks[n] for n in names})

    scaling = []
    for width in args.widths:
        shape = Shape(data.shape[1], BASE["depth"], BASE["repetitions"], width, width)
        scaling.append(time_cell(shape, names, SCALING_BATCH, data, args.repeats, args.warmup, args.budget,
                                 args.seed))
        print(f"sums = inputs = {width}: " + ", ".join(
            f"{n} {scaling[-1]['results'][n]['median_step_ms']:.1f} ms" for n in names), flush=True)
    batches = []
    for batch in args.batch_sizes:
        batches.append(time_cell(base, names, batch, data, args.repeats, args.warmup, args.budget, args.seed))
        print(f"batch {batch}: " + ", ".join(
            f"{n} {batches[-1]['results'][n]['median_step_ms']:.1f} ms" for n in names), flush=True)

    versions = {"torch": torch.__version__}
    for name in names[1:]:
        from importlib.metadata import version

        versions[name] = version("libcirkit" if name == "cirkit" else name)
    result = {
        "benchmark": "training step (Adam, lr 0.01) of equal RAT-SPNs on plants",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "source": source_revision(), "versions": versions, "missing": missing,
        "settings": vars(args) | {"out": str(args.out)},
        "base_shape": base.__dict__, "checks": checks,
        "parameter_scaling": scaling, "batch_scaling": batches,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"\nParameters (sums = inputs per region), batch {SCALING_BATCH}:\n")
    print(markdown(scaling, names, "sums=inputs"))
    print(f"\nBatch size, base model {BASE}:\n")
    print(markdown(batches, names, "batch"))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
