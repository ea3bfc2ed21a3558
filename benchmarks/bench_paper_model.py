"""Speed of the compiled engine on the paper's NLTCS model against a hand-fused torch implementation.

The model (Trapp, Peharz & Pernkopf 2019): a root sum over K = 8 products, each a product of one sum per variable
over the two indicators [x_d = 0] and [x_d = 1], with raw (unnormalised) weights. Measured on the full NLTCS
training set (16,181 x 16), in float64 and float32, with torch's default number of threads:

* forward: the full-batch log-likelihood, partition function included;
* step: forward, backward of the negative mean log-likelihood, a plain SGD step and the clamp of raw weights to
  their floor.

The engine runs two ways: given the raw data array every call ("raw x") and given ``model.encode(x)`` computed once
("encoded", as a training loop does). The baseline is the fastest plain torch written for this one model. Outputs of
both (values and gradients) are checked equal before timing. All six measurements are called in turn, in a fresh
random order every round, ``--repeats`` times after ``--warmup`` rounds, so that they share the machine's background
load; medians (and 10th/90th percentiles) are printed and written to ``benchmarks/results/paper_model.json`` with
the ratios engine / hand-fused: the ratio of medians, and the median of the ratios within each round.

    python benchmarks/bench_paper_model.py [--repeats 200] [--warmup 20] [--out benchmarks/results/paper_model.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved_timings  # noqa: E402

import overspn as osp  # noqa: E402
from overspn.atomic import atomic_write_json  # noqa: E402
from overspn.data import load_dataset  # noqa: E402

COMPONENTS = 8
FLOOR = 1e-4
LEARNING_RATE = 0.05
REPO = Path(__file__).resolve().parents[1]


def paper_structure(num_vars: int, components: int, rng: np.random.Generator) -> osp.Node:
    """Root sum over ``components`` products of per-variable sums over two shared indicators; random weights."""
    indicators = [(osp.Indicator(d, 0), osp.Indicator(d, 1)) for d in range(num_vars)]
    products = [
        osp.Product([osp.Sum(indicators[d], rng.uniform(0.1, 1.0, size=2)) for d in range(num_vars)])
        for _ in range(components)
    ]
    return osp.Sum(products, rng.uniform(0.1, 1.0, size=components))


class HandFused(torch.nn.Module):
    """The same model in plain torch: raw weights, log-space, one matrix product for all components."""

    def __init__(self, root: osp.Sum, dtype: torch.dtype) -> None:
        super().__init__()
        leaf_weights = [[child.weights for child in product.children] for product in root.children]
        self.root_weights = torch.nn.Parameter(torch.tensor(root.weights, dtype=dtype))  # (K,)
        self.leaf_weights = torch.nn.Parameter(torch.tensor(np.array(leaf_weights), dtype=dtype))  # (K, D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_leaf = torch.log(self.leaf_weights)
        log_w0, log_w1 = log_leaf[..., 0], log_leaf[..., 1]  # (K, D)
        log_root = torch.log(self.root_weights)
        # log prod_d w_{k,d,x_d} = x @ (log w1 - log w0)^T + sum_d log w0, for binary x
        joint = torch.addmm(log_w0.sum(1) + log_root, x, (log_w1 - log_w0).T)  # (N, K)
        log_partition = torch.logsumexp(log_root + torch.log(self.leaf_weights.sum(2)).sum(1), dim=0)
        return torch.logsumexp(joint, dim=1) - log_partition

    def clamp(self) -> None:
        with torch.no_grad():
            self.root_weights.clamp_(min=FLOOR)
            self.leaf_weights.clamp_(min=FLOOR)


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered), "min_ms": ordered[0], "p10_ms": ordered[len(ordered) // 10],
            "p90_ms": ordered[(9 * len(ordered)) // 10]}


def measure(train: np.ndarray, dtype: torch.dtype, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    root = paper_structure(train.shape[1], COMPONENTS, np.random.default_rng(0))
    model = osp.compile(root, "raw", floor=FLOOR, dtype=dtype)
    fused = HandFused(root, dtype)
    x = torch.from_numpy(train).to(dtype)
    encoded = model.encode(train)

    with torch.no_grad():
        expected = fused(x)
        tolerance = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
        torch.testing.assert_close(model.log_likelihood(train), expected, **tolerance)
        torch.testing.assert_close(model.log_likelihood(encoded), expected, **tolerance)

    engine_sgd = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    osp.keep_floor(engine_sgd, model)  # every step ends with model.project_(): raw weights back onto the floor
    fused_sgd = torch.optim.SGD(fused.parameters(), lr=LEARNING_RATE)

    def engine_step(data: object) -> None:
        engine_sgd.zero_grad(set_to_none=True)
        loss = -model.log_likelihood(data).mean()
        loss.backward()
        engine_sgd.step()

    def fused_step() -> None:
        fused_sgd.zero_grad(set_to_none=True)
        loss = -fused(x).mean()
        loss.backward()
        fused_sgd.step()
        fused.clamp()

    # The gradients agree too (indicator-sum weights are stored flat in topological order: component, variable).
    (-model.log_likelihood(encoded).mean()).backward()
    (-fused(x).mean()).backward()
    leaf_grad = model.discrete.indicator_sum_weights.param.grad.view_as(fused.leaf_weights)
    torch.testing.assert_close(leaf_grad, fused.leaf_weights.grad, **tolerance)
    torch.testing.assert_close(model.layers[0].weights.param.grad, fused.root_weights.grad, **tolerance)

    def no_grad(function: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return function()
        return call

    functions = {
        "forward_hand_fused": no_grad(lambda: fused(x)),
        "forward_engine_raw_x": no_grad(lambda: model.log_likelihood(train)),
        "forward_engine_encoded": no_grad(lambda: model.log_likelihood(encoded)),
        "step_hand_fused": fused_step,
        "step_engine_raw_x": lambda: engine_step(train),
        "step_engine_encoded": lambda: engine_step(encoded),
    }
    times = interleaved_timings(functions, repeats, warmup)
    result = {name: summary(values) for name, values in times.items()}
    # the median over rounds of the ratio within a round: robust to load that changes between rounds
    for name, values in times.items():
        baseline = times[f"{name.split('_')[0]}_hand_fused"]
        result[name]["median_ratio_in_round"] = statistics.median(v / b for v, b in zip(values, baseline))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "paper_model.json")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. which engine version ran)")
    args = parser.parse_args()
    if not os.environ.get("OVERSPN_DATA") and (REPO.parent / "shared" / "datasets").is_dir():
        os.environ["OVERSPN_DATA"] = str(REPO.parent / "shared" / "datasets")
    train = load_dataset("nltcs").train

    results: dict[str, object] = {
        "model": f"root sum over {COMPONENTS} products of per-variable indicator sums, raw weights",
        "data": {"name": "nltcs", "split": "train", "rows": train.shape[0], "variables": train.shape[1]},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "engine": str(Path(osp.__file__).parent),
        "load_average_before": os.getloadavg(),
        "note": args.note,
    }
    print(f"NLTCS train {train.shape}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} after {args.warmup} warm-up calls")
    print(f"{'dtype':8} {'measurement':24} {'median ms':>10} {'min':>8} {'p10':>8} {'p90':>8} {'/ hand-fused':>13} "
          f"{'in-round ratio':>15} {'min ratio':>10}")
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).removeprefix("torch.")
        timings = measure(train, dtype, args.repeats, args.warmup)
        ratios = {}
        for key, value in timings.items():
            kind = key.split("_")[0]
            ratio = value["median_ms"] / timings[f"{kind}_hand_fused"]["median_ms"]
            if "engine" in key:
                ratios[key] = ratio
            min_ratio = value["min_ms"] / timings[f"{kind}_hand_fused"]["min_ms"]
            print(f"{name:8} {key:24} {value['median_ms']:10.3f} {value['min_ms']:8.3f} {value['p10_ms']:8.3f} "
                  f"{value['p90_ms']:8.3f} {ratio:13.2f} {value['median_ratio_in_round']:15.2f} {min_ratio:10.2f}")
        min_ratios = {key: timings[key]["min_ms"] / timings[f"{key.split('_')[0]}_hand_fused"]["min_ms"]
                      for key in ratios}
        results[name] = {"timings": timings, "ratios_engine_over_hand_fused": ratios,
                         "ratios_of_minima_engine_over_hand_fused": min_ratios}
    results["load_average_after"] = os.getloadavg()
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
