"""Speed of the compiled engine: raw tensors vs encoded data vs a hand-fused model, and irregular random DAGs.

1. The paper's NLTCS model (root sum over K = 8 products of per-variable indicator sums, raw weights; full NLTCS
   training set, 16,181 x 16): one full-batch training step (zero_grad, forward, backward, SGD step, clamp of raw
   weights to the floor) given

   * ``raw_uncached``: the same torch tensor every step, with the model's encoding cache off (what a plain
     ``model.log_likelihood(x)`` cost before the cache: check and encode every step);
   * ``raw``: the same torch tensor every step (the cache reuses its checked encoding);
   * ``encoded``: ``model.encode(x)`` computed once;
   * ``hand_fused``: the hand-written torch model of ``bench_paper_model.py`` (the baseline).

   float32 and float64; all four are called in turn, in a fresh random order every round, ``--repeats`` times
   after ``--warmup`` rounds in the same process; medians and the ratios to the hand-fused median are reported.

2. Random DAGs over 10 binary variables (indicator-sum inputs; sums and products drawn at random from a pool per
   scope, so that every layer reads from many earlier layers), 10^2 .. 10^4 nodes (10^5 with ``--huge``): the
   no-grad forward pass over encoded data, one thread, with the flat node-value tensor (``after``) and with the
   previous per-layer list whose sources every layer concatenates (``before``, ``model.flat_outputs = False``,
   which is exactly the previous code path), interleaved; the outputs are checked identical.

Writes ``results/bench/engine.json`` (``--out``) and prints a table. SPFlow is not run here (see bench_peers.py).

    OVERSPN_DATA=../shared/datasets python benchmarks/bench_engine.py [--repeats 50] [--warmup 5] [--huge]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paper_model import FLOOR, LEARNING_RATE, HandFused, paper_structure  # noqa: E402
from random_dags import random_dag  # noqa: E402
from timing import interleaved_timings  # noqa: E402

import overspn as osp  # noqa: E402
from overspn.atomic import atomic_write_json  # noqa: E402
from overspn.data import load_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = 8


def paper_step(train: np.ndarray, dtype: torch.dtype, repeats: int, warmup: int) -> dict[str, object]:
    root = paper_structure(train.shape[1], COMPONENTS, np.random.default_rng(0))
    model = osp.compile(root, "raw", floor=FLOOR, dtype=dtype)
    uncached = osp.compile(root, "raw", floor=FLOOR, dtype=dtype)
    uncached.encoding_cache_size = 0
    fused = HandFused(root, dtype)
    x = torch.from_numpy(train).to(dtype)
    encoded = model.encode(x)
    with torch.no_grad():
        assert torch.equal(model.log_likelihood(x), model.log_likelihood(encoded))
        assert torch.equal(model.log_likelihood(x), uncached.log_likelihood(x))
        tolerance = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
        torch.testing.assert_close(model.log_likelihood(x), fused(x), **tolerance)

    optimisers = {id(m): torch.optim.SGD(m.parameters(), lr=LEARNING_RATE) for m in (model, uncached, fused)}

    def engine_step(engine: osp.SPNModule, data: object) -> None:
        optimiser = optimisers[id(engine)]
        optimiser.zero_grad(set_to_none=True)
        (-engine.log_likelihood(data).mean()).backward()
        optimiser.step()
        engine.project_()

    def fused_step() -> None:
        optimiser = optimisers[id(fused)]
        optimiser.zero_grad(set_to_none=True)
        (-fused(x).mean()).backward()
        optimiser.step()
        fused.clamp()

    functions = {
        "hand_fused": fused_step,
        "raw_uncached": lambda: engine_step(uncached, x),
        "raw": lambda: engine_step(model, x),
        "encoded": lambda: engine_step(model, encoded),
    }
    times = interleaved_timings(functions, repeats, warmup)
    base = times["hand_fused"]
    return {name: {"median_ms": statistics.median(values),
                   "ratio_to_hand_fused": statistics.median(values) / statistics.median(base),
                   "median_in_round_ratio": statistics.median(v / b for v, b in zip(values, base))}
            for name, values in times.items()}


def dag_forward(target: int, repeats: int, warmup: int) -> dict[str, object]:
    rng = np.random.default_rng(target)
    root = random_dag(10, target, rng)
    started = time.perf_counter()
    model = osp.compile(root, "raw", dtype=torch.float64)
    compile_s = time.perf_counter() - started
    nodes = len(osp.topological_order(root))
    rows = int(min(100_000, max(1_000, 2e7 // nodes)))
    x = torch.from_numpy(rng.integers(0, 2, size=(rows, 10)).astype(np.float64))
    data = model.encode(x)

    def forward(flat: bool) -> torch.Tensor:
        model.flat_outputs = flat
        with torch.no_grad():
            return model.log_likelihood(data)

    torch.testing.assert_close(forward(True), forward(False), rtol=1e-12, atol=1e-12)
    times = interleaved_timings({"before": lambda: forward(False), "after": lambda: forward(True)}, repeats, warmup)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    return {"nodes": nodes, "layers": len(model.layers), "rows": rows, "compile_s": compile_s,
            "before_ms": before, "after_ms": after, "speedup": before / after,
            "median_in_round_speedup": statistics.median(b / a for b, a in zip(times["before"], times["after"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--huge", action="store_true", help="also a DAG of about 10^5 nodes")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "engine.json")
    args = parser.parse_args()
    if not os.environ.get("OVERSPN_DATA") and (REPO.parent / "shared" / "datasets").is_dir():
        os.environ["OVERSPN_DATA"] = str(REPO.parent / "shared" / "datasets")
    results: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "machine": platform.machine(), "python": platform.python_version(),
                                  "repeats": args.repeats, "warmup": args.warmup,
                                  "load_average_before": os.getloadavg()}

    train = load_dataset("nltcs").train
    print(f"1. full-batch training step, NLTCS train {train.shape}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'dtype':8} {'input':14} {'median ms':>10} {'/ hand-fused':>13} {'in-round ratio':>15}")
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        timings = paper_step(train, dtype, args.repeats, args.warmup)
        results[f"paper_step_{name}"] = timings
        for key, value in timings.items():
            print(f"{name:8} {key:14} {value['median_ms']:10.3f} {value['ratio_to_hand_fused']:13.2f} "
                  f"{value['median_in_round_ratio']:15.2f}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print("\n2. random DAGs, 10 binary variables, float64, no grad, 1 thread: forward ms, before (per-layer "
          "concatenation) / after (flat node values)")
    print(f"{'nodes':>8} {'layers':>7} {'rows':>8} {'compile s':>10} {'before ms':>10} {'after ms':>10} "
          f"{'speed-up':>9}")
    dags = []
    for target in (100, 1_000, 10_000) + ((100_000,) if args.huge else ()):
        repeats = args.repeats if target <= 10_000 else max(3, args.repeats // 10)
        row = dag_forward(target, repeats, min(args.warmup, repeats))
        dags.append(row)
        print(f"{row['nodes']:8d} {row['layers']:7d} {row['rows']:8d} {row['compile_s']:10.2f} "
              f"{row['before_ms']:10.2f} {row['after_ms']:10.2f} {row['speedup']:9.2f}")
    torch.set_num_threads(threads)
    results["random_dags"] = dags
    results["load_average_after"] = os.getloadavg()
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
