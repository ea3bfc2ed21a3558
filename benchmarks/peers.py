"""The same RAT-SPN in overspn, SPFlow 1.1 and cirkit 0.3.1, and their training steps timed side by side.

Every library builds the same RAT-SPN: ``repetitions`` random binary trees of ``depth`` splits over the variables,
``inputs`` factorised Bernoulli/categorical input distributions per leaf region, ``sums`` sum nodes per inner region
over the cross product of the two child regions, and one root mixing the tops of all repetitions (see
``bench_peers.py`` for how each library is configured). SPFlow and cirkit are imported only by their runners, so
this module also serves overspn alone.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from overspn.engine.rat import RatConfig, RatSPN

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


def time_cell(shape: Any, names: list[str], batch: int, data: torch.Tensor, repeats: int, warmup: int,
              budget: float, seed: int, runners_by_name: Mapping[str, type[Runner]] = RUNNERS) -> dict[str, Any]:
    """Interleaved training steps of every library on the same random batches; ``shape`` is a :class:`Shape` for
    the RAT-SPN runners, or whatever the classes of ``runners_by_name`` are built from."""
    runners = [runners_by_name[name](shape, seed) for name in names]
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


