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

``--suite speed`` runs instead the speed suite, one table each, written to ``results/speed.json``: (0) the
full-batch training step of the paper's NLTCS model on raw tensors (the Quickstart's loop) against the hand-fused
torch model, float32 and float64, at ``--paper-threads`` threads (``bench_engine.paper_step``); (1) the
paper's mixture of 1000 products over 1000 variables (3 million nodes): build, compile + first forward, save and
load; (2) the Adam step of RAT-SPNs against cirkit at sums = inputs = 5, 12, 25 (1.1e4, 1.1e5, 9.6e5 parameters),
interleaved as above; (3) the no-grad forward of random DAG SPNs of 10^2 .. 10^5 nodes (normalised weights,
sub-networks shared) against the same DAG built from SPFlow 1.1 modules, evaluated with SPFlow's cache so that
shared modules run once; outputs are checked equal (within 1e-3 nats) before timing.

The peers live in their own environment (they are not dependencies of overspn)::

    python -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e ".[bench]"
    OVERSPN_DATA=../shared/datasets .venv-bench/bin/python benchmarks/bench_peers.py [--threads 1]
    OVERSPN_DATA=../shared/datasets .venv-bench/bin/python benchmarks/bench_peers.py --suite speed
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_engine import paper_step
from provenance import source_revision
from timing import interleaved_timings

from overspn.atomic import atomic_write_json
from overspn.data import load_dataset
from overspn.engine.rat import RatConfig, RatSPN

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATE = 0.01
BASE = dict(depth=3, repetitions=10, sums=10, inputs=10)
SCALING_WIDTHS = (5, 10, 16, 25)  # sums = inputs; about 1e4, 7e4, 2.6e5, 1e6 parameters at depth 3, 10 repetitions
SCALING_BATCH = 256
BATCH_SIZES = (64, 256, 1024, 4096)


@dataclass(frozen=True)
class Shape:
    num_vars: int
    depth: int
    repetitions: int
    sums: int
    inputs: int


class Runner:
    """One library's model of ``shape``: a training step, the log-likelihood and parameter setters for the checks."""

    name: str

    def __init__(self, shape: Shape, seed: int) -> None:
        self.shape = shape
        self.module = self.build(shape, seed)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=LEARNING_RATE)

    def build(self, shape: Shape, seed: int) -> torch.nn.Module:
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_partition(self) -> float:
        raise NotImplementedError

    def set_factorised(self, p: np.ndarray) -> None:
        """Uniform sum weights; every input distribution of variable d has success probability p[d]."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def step(self, x: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = -self.log_likelihood(x).mean()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


class OverspnRunner(Runner):
    name = "overspn"

    def build(self, shape: Shape, seed: int) -> torch.nn.Module:
        config = RatConfig(shape.num_vars, shape.depth, shape.repetitions, shape.sums, shape.inputs, "bernoulli",
                           seed=seed)
        return RatSPN(config, weights="softmax")

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.log_likelihood(x)

    def log_partition(self) -> float:
        with torch.no_grad():
            return float(self.module.log_partition())

    @torch.no_grad()
    def set_factorised(self, p: np.ndarray) -> None:
        logit = torch.from_numpy(np.log(p / (1 - p))).to(self.module.logit.dtype)
        self.module.logit.copy_(logit[:, None, None].expand_as(self.module.logit))
        for parameter in [*self.module.sum_weights, self.module.root_weights]:
            parameter.zero_()


class SPFlowRunner(Runner):
    name = "spflow"

    def build(self, shape: Shape, seed: int) -> torch.nn.Module:
        from spflow.meta.data.scope import Scope
        from spflow.modules.leaves import Bernoulli
        from spflow.zoo.rat.rat_spn import RatSPN as SPFlowRatSPN

        # SPFlow draws its region graph from the global generators
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.leaf = Bernoulli(scope=Scope(list(range(shape.num_vars))), out_channels=shape.inputs,
                              num_repetitions=shape.repetitions)
        return SPFlowRatSPN([self.leaf], n_root_nodes=1, n_region_nodes=shape.sums,
                            num_repetitions=shape.repetitions, depth=shape.depth, outer_product=True)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.log_likelihood(x).reshape(len(x))

    def log_partition(self) -> float:
        missing = torch.full((1, self.shape.num_vars), math.nan)
        with torch.no_grad():
            return float(self.log_likelihood(missing)[0])

    @torch.no_grad()
    def set_factorised(self, p: np.ndarray) -> None:
        for parameter in self.module.parameters():
            parameter.zero_()  # sum logits: uniform weights
        probs = torch.from_numpy(p).float()[:, None, None].expand(self.leaf.probs.shape).clone()
        self.leaf.probs = probs
        if not torch.allclose(self.leaf.probs, probs, atol=1e-6):
            raise RuntimeError("SPFlow's Bernoulli probabilities were not set")


class CirkitRunner(Runner):
    name = "cirkit"

    def build(self, shape: Shape, seed: int) -> torch.nn.Module:
        import cirkit.symbolic.functional as symbolic
        from cirkit.pipeline import PipelineContext
        from cirkit.symbolic.layers import CategoricalLayer
        from cirkit.templates import utils
        from cirkit.templates.region_graph import RandomBinaryTree

        torch.manual_seed(seed)
        region_graph = RandomBinaryTree(shape.num_vars, depth=shape.depth, num_repetitions=shape.repetitions,
                                        seed=seed)
        softmax = utils.parameterization_to_factory(utils.Parameterization(activation="softmax",
                                                                           initialization="normal"))
        circuit = region_graph.build_circuit(
            input_factory=functools.partial(CategoricalLayer, num_categories=2), sum_product="tucker",
            sum_weight_factory=softmax, num_input_units=shape.inputs, num_sum_units=shape.sums)
        context = PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True)
        with context:
            compiled = context.compile(circuit)
            self.partition = context.compile(symbolic.integrate(circuit))
        return compiled

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).reshape(len(x))

    def log_partition(self) -> float:
        # compiled in the same pipeline context, the integrated circuit shares the parameter tensors of the model
        with torch.no_grad():
            return float(self.partition().reshape(()))

    @torch.no_grad()
    def set_factorised(self, p: np.ndarray) -> None:
        from cirkit.backend.torch.layers import TorchCategoricalLayer

        inputs = [layer for layer in self.module.layers if isinstance(layer, TorchCategoricalLayer)]
        if len(inputs) != 1:
            raise RuntimeError(f"expected one folded categorical input layer, found {len(inputs)}")
        variable = inputs[0].scope_idx[:, 0].long()  # (folds,)
        logits = torch.from_numpy(np.log(np.stack([1 - p, p], axis=1))).float()[variable]  # (folds, 2)
        for parameter in self.module.parameters():
            if parameter.dim() == 3 and parameter.shape[-1] == 2 and parameter.shape[0] == len(variable):
                parameter.copy_(logits[:, None, :].expand_as(parameter))
            else:
                parameter.zero_()


RUNNERS: dict[str, type[Runner]] = {"overspn": OverspnRunner, "spflow": SPFlowRunner, "cirkit": CirkitRunner}


def available_runners() -> tuple[list[str], dict[str, str]]:
    names, missing = ["overspn"], {}
    for name, module in (("spflow", "spflow"), ("cirkit", "cirkit")):
        try:
            __import__(module)
            names.append(name)
        except ImportError as error:
            missing[name] = str(error)
    return names, missing


def check_comparable(runners: list[Runner], x: torch.Tensor) -> dict[str, Any]:
    """Finite, normalised log-likelihoods at the random initialisation; equal values at equal parameters."""
    report: dict[str, Any] = {"batch_rows": len(x)}
    for runner in runners:
        with torch.no_grad():
            ll = runner.log_likelihood(runner.prepare(x))
        log_z = runner.log_partition()
        if not bool(torch.isfinite(ll).all()) or abs(log_z) > 1e-4:
            raise RuntimeError(f"{runner.name}: log-likelihoods finite: {bool(torch.isfinite(ll).all())}, "
                               f"log Z = {log_z} (must be 0)")
        report[runner.name] = {"random_init_mean_ll": float(ll.mean()), "log_partition": log_z}
    rng = np.random.default_rng(1)
    p = rng.uniform(0.2, 0.8, size=x.shape[1])
    expected = (x.double().numpy() * np.log(p) + (1 - x.double().numpy()) * np.log(1 - p)).sum(axis=1)
    for runner in runners:
        runner.set_factorised(p)
        with torch.no_grad():
            ll = runner.log_likelihood(runner.prepare(x)).double().numpy()
        error = float(np.max(np.abs(ll - expected)))
        if error > 1e-3:
            raise RuntimeError(f"{runner.name}: at equal parameters the log-likelihood is off by {error}")
        report[runner.name]["equal_parameters_max_abs_error"] = error
    report["equal_parameters_mean_ll"] = float(expected.mean())
    return report


def time_cell(shape: Shape, names: list[str], batch: int, data: torch.Tensor, repeats: int, warmup: int,
              budget: float, seed: int) -> dict[str, Any]:
    """Interleaved training steps of every library on the same random batches."""
    runners = [RUNNERS[name](shape, seed) for name in names]
    generator = torch.Generator().manual_seed(seed)
    batches = [data[torch.randint(len(data), (batch,), generator=generator)] for _ in range(warmup + repeats)]
    prepared = {runner.name: [runner.prepare(b) for b in batches] for runner in runners}
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    spent = dict.fromkeys(times, 0.0)
    for index in range(warmup):
        for runner in runners:
            loss = runner.step(prepared[runner.name][index])
            if not math.isfinite(loss):
                raise RuntimeError(f"{runner.name}: non-finite loss during warm-up")
    order = random.Random(seed)
    for index in range(warmup, warmup + repeats):
        active = [r for r in runners if len(times[r.name]) < 3 or spent[r.name] < budget]
        if not active:
            break
        for runner in order.sample(active, len(active)):
            start = time.perf_counter()
            runner.step(prepared[runner.name][index])
            elapsed = time.perf_counter() - start
            times[runner.name].append(elapsed)
            spent[runner.name] += elapsed
    steps_per_epoch = math.ceil(len(data) / batch)
    cell: dict[str, Any] = {"batch": batch, "shape": shape.__dict__, "results": {}}
    for runner in runners:
        values = sorted(times[runner.name])
        median = statistics.median(values)
        cell["results"][runner.name] = {
            "parameters": runner.num_parameters(), "steps_timed": len(values),
            "median_step_ms": 1e3 * median, "p10_step_ms": 1e3 * values[int(0.1 * (len(values) - 1))],
            "p90_step_ms": 1e3 * values[int(0.9 * (len(values) - 1))],
            "samples_per_s": batch / median, "epoch_estimate_s": median * steps_per_epoch}
    base = cell["results"]["overspn"]["median_step_ms"]
    for result in cell["results"].values():
        result["ratio_to_overspn"] = result["median_step_ms"] / base
    return cell


def markdown(cells: list[dict[str, Any]], names: list[str], key: str) -> str:
    head = f"| {key} | " + " | ".join(f"{n} params | {n} ms/step (p10-p90) | {n} samples/s" for n in names)
    head += " | " + " | ".join(f"{n}/overspn" for n in names if n != "overspn") + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(names) + len(names) - 1)]
    for cell in cells:
        label = cell["batch"] if key == "batch" else cell["shape"]["sums"]
        row = [str(label)]
        for name in names:
            r = cell["results"][name]
            spread = f"({r['p10_step_ms']:.1f}-{r['p90_step_ms']:.1f})"
            row += [f"{r['parameters']:,}", f"{r['median_step_ms']:.1f} {spread}", f"{r['samples_per_s']:,.0f}"]
        row += [f"{cell['results'][n]['ratio_to_overspn']:.2f}" for n in names if n != "overspn"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- the speed suite: large structures, RAT-SPN steps against cirkit, random DAGs against SPFlow -------------------

SPEED_WIDTHS = (5, 12, 25)  # sums = inputs: 11,200 / 113,400 / 961,000 parameters (about 1e4, 1e5, 1e6)
DAG_SIZES = (100, 1_000, 10_000, 100_000)


def normalised_dag(num_vars: int, target: int, rng: np.random.Generator) -> Any:
    """A random valid DAG SPN of about ``target`` nodes over ``num_vars`` binary variables, with normalised weights
    (so that SPFlow, whose sums normalise their weights, computes the same function): ``repetitions`` random binary
    splits; for every scope ``width`` sums, each over two products whose children are drawn from the pools of the
    two halves (shared between repetitions, so a layer reads from many earlier layers); inputs are sums over the two
    indicators of a variable (Bernoulli leaves for SPFlow)."""
    import overspn as osp

    repetitions = 4 if target <= 1000 else 10
    width = max(1, round(target / (repetitions * (num_vars - 1) * 3 + num_vars)))

    def weights(k: int) -> np.ndarray:
        w = rng.uniform(0.1, 1.0, k)
        return w / w.sum()

    pool: dict[frozenset[int], list[Any]] = {
        frozenset([v]): [osp.Sum([osp.Indicator(v, 0), osp.Indicator(v, 1)], weights(2)) for _ in range(width)]
        for v in range(num_vars)}

    def build(scope: list[int]) -> frozenset[int]:
        key = frozenset(scope)
        if len(scope) == 1:
            return key
        cut = int(rng.integers(1, len(scope)))
        left, right = build(scope[:cut]), build(scope[cut:])
        nodes = pool.setdefault(key, [])
        for _ in range(width):
            products = [osp.Product([pool[left][rng.integers(len(pool[left]))],
                                     pool[right][rng.integers(len(pool[right]))]]) for _ in range(2)]
            nodes.append(osp.Sum(products, weights(2)))
        return key

    for _ in range(repetitions):
        build(list(rng.permutation(num_vars)))
    full = pool[frozenset(range(num_vars))]
    return osp.Sum(full, weights(len(full)))


def spflow_dag(root: Any) -> torch.nn.Module:
    """The same DAG as SPFlow 1.1 modules (shared sub-networks shared): indicator sums become Bernoulli leaves."""
    from spflow.meta.data.scope import Scope
    from spflow.modules.leaves import Bernoulli
    from spflow.modules.products import Product
    from spflow.modules.sums import Sum

    import overspn as osp

    built: dict[int, torch.nn.Module] = {}
    for node in osp.topological_order(root):
        if isinstance(node, osp.Indicator):
            continue
        if isinstance(node, osp.Sum) and all(isinstance(c, osp.Indicator) for c in node.children):
            p = float(node.weights[1] / node.weights.sum())
            built[id(node)] = Bernoulli(scope=Scope([node.children[0].var]), probs=torch.tensor([[p]]))
        elif isinstance(node, osp.Product):
            built[id(node)] = Product([built[id(c)] for c in node.children])
        else:
            w = torch.tensor(node.weights / node.weights.sum(), dtype=torch.float32).view(1, -1, 1, 1)
            built[id(node)] = Sum([built[id(c)] for c in node.children], weights=w)
    return built[id(root)]


def dag_cell(target: int, repeats: int, warmup: int, budget: float, with_spflow: bool) -> dict[str, Any]:
    """No-grad forward of a random DAG over 10 binary variables: overspn's compiled model on encoded data against
    SPFlow's module graph (with its cache, so that shared modules are evaluated once), on the same rows."""
    import overspn as osp

    rng = np.random.default_rng(target)
    root = normalised_dag(10, target, rng)
    nodes = len(osp.topological_order(root))
    started = time.perf_counter()
    model = osp.compile(root, "raw", dtype=torch.float32)
    compile_s = time.perf_counter() - started
    rows = 1000
    x = torch.from_numpy(rng.integers(0, 2, size=(rows, 10)).astype(np.float32))
    data = model.encode(x)

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return model.log_likelihood(data)

    functions = {"overspn": ours}
    cell: dict[str, Any] = {"nodes": nodes, "layers": len(model.layers), "rows": rows, "compile_s": compile_s}
    if with_spflow:
        from spflow.utils.cache import Cache

        started = time.perf_counter()
        peer = spflow_dag(root)
        cell["spflow_build_s"] = time.perf_counter() - started

        def theirs() -> torch.Tensor:
            with torch.no_grad():
                return peer.log_likelihood(x, cache=Cache()).reshape(rows)

        error = float((ours().double() - theirs().double()).abs().max())
        if error > 1e-3:
            raise RuntimeError(f"SPFlow and overspn differ by {error} on a DAG of {nodes} nodes")
        cell["max_abs_difference"] = error
        functions["spflow"] = theirs
    times = interleaved_timings(functions, repeats, warmup, budget)
    cell["results"] = {name: {"median_ms": statistics.median(v), "runs": len(v)} for name, v in times.items()}
    if with_spflow:
        cell["spflow_over_overspn"] = cell["results"]["spflow"]["median_ms"] / cell["results"]["overspn"]["median_ms"]
    return cell


def mixture_cell(num_vars: int, components: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    """Build, compile (+ first forward), save and load the paper's mixture of ``components`` products over
    ``num_vars`` variables (3 million nodes at 1000 x 1000); ``repeats`` rounds, each in this order."""
    import gc
    import resource

    import overspn as osp

    path = out_dir / f"mixture_{num_vars}x{components}.spn"
    rounds = []
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 2, size=(256, num_vars)).astype(np.float32))
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        root = osp.mixture(num_vars, components)
        built = time.perf_counter()
        model = osp.compile(root)
        compiled = time.perf_counter()
        with torch.no_grad():
            model.log_likelihood(x)
        forward = time.perf_counter()
        osp.save(model, path)
        saved = time.perf_counter()
        del model, root
        gc.collect()
        loaded_start = time.perf_counter()
        model = osp.load(path)
        loaded = time.perf_counter()
        rounds.append({"build_s": built - started, "compile_s": compiled - built, "first_forward_s": forward - compiled,
                       "compile_and_first_forward_s": forward - built, "save_s": saved - forward,
                       "load_s": loaded - loaded_start})
        del model
    result: dict[str, Any] = {"num_vars": num_vars, "components": components,
                              "nodes": 3 * num_vars * components + components + 1,
                              "file_bytes": path.stat().st_size, "rounds": rounds}
    for key in rounds[0]:
        result[f"median_{key}"] = statistics.median(r[key] for r in rounds)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path.unlink()
    return result


def speed_suite(args: argparse.Namespace) -> None:
    names, missing = available_runners()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    result: dict[str, Any] = {
        "benchmark": "overspn speed suite: the paper's model on raw tensors against a hand-fused model, a "
                     "3-million-node mixture, RAT-SPN steps against cirkit, random DAGs against SPFlow",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg()},
        "source": source_revision(), "versions": {"torch": torch.__version__}, "missing": missing,
        "settings": vars(args) | {"out": str(args.out)},
    }
    for name in names[1:]:
        from importlib.metadata import version

        result["versions"][name] = version("libcirkit" if name == "cirkit" else name)
    # 0. the paper's model on raw tensors against the hand-fused model
    result["paper_step_threads"] = args.paper_threads
    threads = torch.get_num_threads()
    torch.set_num_threads(args.paper_threads)
    nltcs = load_dataset("nltcs").train
    print(f"\n0. paper's NLTCS model, full-batch step, {args.paper_threads} thread(s): ms (ratio to hand-fused)")
    for dtype in (torch.float32, torch.float64):
        cell = paper_step(nltcs, dtype, args.paper_repeats, args.warmup)
        result[f"paper_step_{str(dtype).removeprefix('torch.')}"] = cell
        print(f"{str(dtype):14} hand-fused {cell['hand_fused']['median_ms']:.2f}; raw tensor "
              f"{cell['raw']['median_ms']:.2f} ({cell['raw']['ratio_to_hand_fused']:.2f}x); encoded "
              f"{cell['encoded']['median_ms']:.2f} ({cell['encoded']['ratio_to_hand_fused']:.2f}x)", flush=True)
    torch.set_num_threads(threads)
    # 1. the mixture
    size = args.mixture
    mixture = mixture_cell(size[0], size[1], args.mixture_repeats, args.out.parent)
    result["mixture"] = mixture
    print(f"\n1. mixture {size[0]} x {size[1]} ({mixture['nodes']:,} nodes, file {mixture['file_bytes'] / 1e6:.1f} "
          f"MB), median of {args.mixture_repeats}: compile {mixture['median_compile_s']:.1f} s + first forward "
          f"{mixture['median_first_forward_s']:.1f} s = {mixture['median_compile_and_first_forward_s']:.1f} s; "
          f"load {mixture['median_load_s']:.1f} s; save {mixture['median_save_s']:.1f} s; peak RSS "
          f"{mixture['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    # 2. RAT-SPN training steps against cirkit
    data = torch.from_numpy(load_dataset("plants").train).float()
    rat_names = [n for n in names if n in ("overspn", "cirkit")]
    rat = []
    print(f"\n2. RAT-SPN Adam step, plants, batch {SCALING_BATCH}, {torch.get_num_threads()} thread(s)")
    print(f"{'sums=inputs':>11} {'parameters':>10} {'overspn ms':>11} {'cirkit ms':>10} {'cirkit/overspn':>15}")
    for width in args.widths:
        shape = Shape(data.shape[1], BASE["depth"], BASE["repetitions"], width, width)
        cell = time_cell(shape, rat_names, SCALING_BATCH, data, args.repeats, args.warmup, args.budget, args.seed)
        rat.append(cell)
        r = cell["results"]
        peer = r.get("cirkit", {})
        print(f"{width:11d} {r['overspn']['parameters']:10,d} {r['overspn']['median_step_ms']:11.1f} "
              f"{peer.get('median_step_ms', float('nan')):10.1f} {peer.get('ratio_to_overspn', float('nan')):15.2f}",
              flush=True)
    result["rat_steps"] = rat
    # 3. random DAGs against SPFlow
    dags = []
    print("\n3. random DAGs, 10 binary variables, 1,000 rows, no grad: forward ms")
    print(f"{'nodes':>8} {'layers':>7} {'compile s':>10} {'overspn ms':>11} {'SPFlow ms':>10} {'SPFlow/overspn':>15}")
    for target in args.dag_sizes:
        cell = dag_cell(target, args.repeats, args.warmup, args.budget, "spflow" in names)
        dags.append(cell)
        r = cell["results"]
        print(f"{cell['nodes']:8d} {cell['layers']:7d} {cell['compile_s']:10.2f} {r['overspn']['median_ms']:11.2f} "
              f"{r.get('spflow', {}).get('median_ms', float('nan')):10.2f} "
              f"{cell.get('spflow_over_overspn', float('nan')):15.2f}", flush=True)
    result["random_dags"] = dags
    result["machine"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"\nload average at end: {os.getloadavg()}; written to {args.out}")


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
    parser.add_argument("--suite", choices=("peers", "speed"), default="peers",
                        help="speed: the 3M-node mixture, RAT steps against cirkit at --widths (default 5 12 25) "
                             "and random DAGs against SPFlow (--dag-sizes); writes results/speed.json")
    parser.add_argument("--mixture", type=int, nargs=2, default=[1000, 1000], metavar=("VARS", "COMPONENTS"))
    parser.add_argument("--mixture-repeats", type=int, default=3)
    parser.add_argument("--dag-sizes", type=int, nargs="+", default=list(DAG_SIZES))
    parser.add_argument("--paper-threads", type=int, default=2, help="speed: torch threads of the paper-model step")
    parser.add_argument("--paper-repeats", type=int, default=200, help="speed: interleaved rounds of that step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite == "speed":
        if args.widths == list(SCALING_WIDTHS):
            args.widths = list(SPEED_WIDTHS)
        if args.out == REPO / "benchmarks" / "results" / "peers.json":
            args.out = REPO / "benchmarks" / "results" / "speed.json"
        speed_suite(args)
        return

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
