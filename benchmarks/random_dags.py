"""Random DAG-shaped SPNs for the benchmarks of irregular structures (``bench_engine.py``, ``bench_speed.py``)."""

from __future__ import annotations

import numpy as np

import overspn as osp


def random_dag(num_vars: int, target: int, rng: np.random.Generator, normalised: bool = False) -> osp.Node:
    """A random valid SPN of about ``target`` nodes over ``num_vars`` binary variables: ``repetitions`` random binary
    splits of the variables; for every scope ``width`` sums, each over two products whose children are drawn from
    the pools of the two halves (shared between repetitions, so that a layer reads from many earlier layers);
    inputs are sums over the two indicators of a variable. ``normalised``: every sum's weights add up to 1 (as
    libraries whose sums normalise their weights compute)."""
    repetitions = 4 if target <= 1000 else 10
    width = max(1, round(target / (repetitions * (num_vars - 1) * 3 + num_vars)))

    def weights(count: int) -> np.ndarray:
        drawn = rng.uniform(0.1, 1.0, count)
        return drawn / drawn.sum() if normalised else drawn

    indicators = [(osp.Indicator(v, 0), osp.Indicator(v, 1)) for v in range(num_vars)]
    pool: dict[frozenset[int], list[osp.Node]] = {
        frozenset([v]): [osp.Sum(indicators[v], weights(2)) for _ in range(width)] for v in range(num_vars)}

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
