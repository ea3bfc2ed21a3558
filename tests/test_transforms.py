"""Transforms keep the function; overparametrize/collapse round-trip; phi; induced trees against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import reference_log_value, structures

import overspn as osp
from overspn.errors import ConfigurationError, StructureError
from overspn.learn.fit import fit

LEAVES = ("indicator", "bernoulli", "categorical", "gaussian")



def random_mixture(num_vars: int, components: int, leaf: str, seed: int) -> osp.Sum:
    """The paper's mixture with random leaf parameters and random root weights."""
    rng = np.random.default_rng(seed)
    base = osp.mixture(num_vars, components, leaf=leaf, seed=seed, perturbation=0.9 if leaf != "gaussian" else 1.0,
                       cardinality=3)
    return osp.Sum(base.children, rng.uniform(0.05, 2.0, size=components))


def random_inputs(num_vars: int, leaf: str, rows: int, seed: int) -> np.ndarray:
    """Random inputs for a mixture's variables, about a quarter of the entries missing (NaN)."""
    rng = np.random.default_rng(seed)
    if leaf == "gaussian":
        x = rng.normal(size=(rows, num_vars))
    else:
        x = rng.integers(0, 3 if leaf == "categorical" else 2, size=(rows, num_vars)).astype(np.float64)
    x[rng.random(x.shape) < 0.25] = np.nan
    return x


def log_likelihood(root: osp.Node, x: np.ndarray, num_vars: int) -> np.ndarray:
    model = osp.compile(root, "raw", floor=0.0, dtype=torch.float64, num_vars=num_vars)
    return model.log_likelihood(x).detach().numpy()


def reference(root: osp.Node, x: np.ndarray) -> np.ndarray:
    """Normalised log-likelihood by recursion over the symbolic structure, independent of the compiled engine."""
    log_z = reference_log_value(root, [math.nan] * x.shape[1])
    return np.array([reference_log_value(root, row) - log_z for row in x])


branchings = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


@given(branching=branchings, leaf=st.sampled_from(LEAVES), num_vars=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_overparametrize_collapse_and_induced_trees_keep_the_function(branching: tuple[int, ...], leaf: str,
                                                                     num_vars: int, seed: int) -> None:
    shallow = random_mixture(num_vars, math.prod(branching), leaf, seed)
    deep = osp.overparametrize(shallow, branching)
    x = random_inputs(num_vars, leaf, 12, seed + 1)
    expected = reference(shallow, x)
    np.testing.assert_allclose(reference(deep, x), expected, rtol=1e-12, atol=1e-12)
    for transformed in (deep, osp.collapse(deep), osp.induced_trees(deep)):
        np.testing.assert_allclose(log_likelihood(transformed, x, num_vars), expected, rtol=1e-11, atol=1e-11)


@given(branching=branchings, seed=st.integers(0, 10**6))
def test_overparametrize_without_init_then_collapse_gives_back_the_weights(branching: tuple[int, ...],
                                                                           seed: int) -> None:
    shallow = random_mixture(3, math.prod(branching), "indicator", seed)
    collapsed = osp.collapse(osp.overparametrize(shallow, branching))
    # the same components (rebuilt with the same names and leaves), in the same order
    assert [c.name for c in collapsed.children] == [c.name for c in shallow.children]
    np.testing.assert_allclose(collapsed.weights, shallow.weights, rtol=1e-13)


@given(structure=structures(max_vars=4, max_depth=3))
def test_collapse_keeps_the_function_of_random_dags(structure) -> None:  # type: ignore[no-untyped-def]
    root = structure.root
    states = np.array(list(itertools.product(*(range(c) for c in structure.cardinalities))), dtype=np.float64)
    rng = np.random.default_rng(0)
    evidence = states.copy()
    evidence[rng.random(states.shape) < 0.3] = np.nan
    collapsed = osp.collapse(root)
    assert not any(isinstance(node, osp.Sum) and any(isinstance(c, osp.Sum) for c in node.children)
                   for node in osp.topological_order(collapsed))  # no chain of sums is left
    for row in np.concatenate([states, evidence]):
        assert reference_log_value(collapsed, row) == pytest.approx(reference_log_value(root, row), rel=1e-11,
                                                                    abs=1e-11)


def test_overparametrize_with_init_sets_every_new_weight() -> None:
    deep = osp.overparametrize(osp.mixture(3, 8, seed=0), (2, 2, 2), init=1e-4)
    sums = [deep]
    for _ in range(3):
        assert all(np.array_equal(node.weights, np.full(2, 1e-4)) for node in sums)
        sums = [child for node in sums for child in node.children]
    assert all(isinstance(node, osp.Product) for node in sums) and len(sums) == 8
    # collapsed: every component has weight (1e-4)^3, so the deep model starts at the shallow model's function
    np.testing.assert_allclose(osp.collapse(deep).weights, np.full(8, 1e-12), rtol=1e-12)


@pytest.mark.parametrize("weights", ["raw", "log"])
def test_collapse_of_a_trained_deep_model_equals_it(weights: str) -> None:
    rng = np.random.default_rng(1)
    deep = osp.overparametrize(osp.mixture(5, 8, seed=1, perturbation=0.3), (2, 4), init=1e-4)
    model = osp.compile(deep, weights, floor=1e-4, dtype=torch.float64)
    data = rng.integers(0, 2, size=(200, 5)).astype(np.float64)
    fit(model, data, optimizer="sgd", lr=0.05, epochs=30)
    trained = model.to_structure()
    moved = osp.collapse(trained).weights
    assert np.ptp(moved / moved.sum()) > 1e-3  # training made the components' weights differ
    x = random_inputs(5, "indicator", 50, 2)
    np.testing.assert_allclose(log_likelihood(osp.collapse(trained), x, 5), model.log_likelihood(x).detach().numpy(),
                               rtol=1e-11, atol=1e-11)


def layer_weights(root: osp.Sum, depth: int) -> list[np.ndarray]:
    """The weights of each sum layer numbered left to right across its nodes, and the components at the bottom."""
    layers, nodes = [], [root]
    for _ in range(depth):
        layers.append(np.concatenate([node.weights for node in nodes]))
        nodes = [child for node in nodes for child in node.children]
    return layers


@given(branching=branchings)
def test_phi_names_the_weights_on_each_components_path(branching: tuple[int, ...]) -> None:
    components = math.prod(branching)
    shallow = random_mixture(2, components, "bernoulli", 0)
    # distinct weights everywhere, so that a weight identifies its edge
    deep = osp.overparametrize(shallow, branching)
    counter = itertools.count(1)

    def renumber(node: osp.Node, layer: int) -> osp.Node:
        if layer == len(branching):
            return node
        return osp.Sum([renumber(c, layer + 1) for c in node.children], [next(counter) for _ in node.children])

    deep = renumber(deep, 0)
    layers = layer_weights(deep, len(branching))
    # follow every path from the root and note which weight (numbered per layer) it takes at every layer
    paths: dict[osp.Node, list[int]] = {}

    def walk(node: osp.Node, layer: int, taken: list[int], offsets: list[int]) -> None:
        if layer == len(branching):
            paths[node] = taken
            return
        for i, child in enumerate(node.children):
            walk(child, layer + 1, taken + [offsets[layer] + i], offsets)
        offsets[layer] += len(node.children)

    walk(deep, 0, [], [0] * len(branching))
    collapsed = osp.collapse(deep)
    collapsed_weight = {child.name: w for child, w in zip(collapsed.children, collapsed.weights)}
    for k, component in enumerate(shallow.children):
        assert paths[component] == [osp.phi(branching, k, layer) for layer in range(len(branching))]
        expected = math.prod(layers[layer][osp.phi(branching, k, layer)] for layer in range(len(branching)))
        assert collapsed_weight[component.name] == pytest.approx(expected, rel=1e-12)


def brute_force_induced_trees(root: osp.Node, univariate_leaves: bool) -> set[frozenset[int]]:
    """Induced trees found by trying every assignment of one chosen child to every sum node (choice sequences).

    Each tree is the set of nodes reached from the root when every sum follows its choice and every product all of
    its children; distinct sets are distinct trees.
    """
    order = osp.topological_order(root)
    scope = osp.scopes(root)

    def stops(node: osp.Node) -> bool:
        return isinstance(node, osp.Leaf) or (univariate_leaves and len(scope[node]) == 1)

    sums = [n for n in order if isinstance(n, osp.Sum) and not stops(n)]
    trees = set()
    for choice in itertools.product(*(range(len(s.children)) for s in sums)):
        chosen = dict(zip(sums, choice))
        reached, stack = set(), [root]
        while stack:
            node = stack.pop()
            reached.add(id(node))
            if stops(node):
                continue
            stack.extend([node.children[chosen[node]]] if isinstance(node, osp.Sum) else node.children)
        trees.add(frozenset(reached))
    return trees


@given(structure=structures(max_vars=4, max_depth=3, max_sum_children=2, share=False),
       univariate_leaves=st.booleans())
def test_count_of_induced_trees_matches_brute_force(structure, univariate_leaves: bool) -> None:  # type: ignore[no-untyped-def]
    root = structure.root
    sums = [n for n in osp.topological_order(root) if isinstance(n, osp.Sum)]
    if math.prod(len(s.children) for s in sums) > 20_000:
        return  # too many choice sequences to try one by one
    expected = len(brute_force_induced_trees(root, univariate_leaves))
    assert osp.count_induced_trees(root, univariate_leaves) == expected
    mixture = osp.induced_trees(root, univariate_leaves=univariate_leaves)
    assert len(mixture.children) == expected
    for row in all_rows_with_missing(structure.cardinalities):
        assert reference_log_value(mixture, row) == pytest.approx(reference_log_value(root, row), rel=1e-11,
                                                                  abs=1e-11)


def all_rows_with_missing(cardinalities: tuple[int, ...]) -> np.ndarray:
    return np.array(list(itertools.product(*([math.nan, *range(c)] for c in cardinalities))), dtype=np.float64)


@pytest.mark.parametrize("branching", [(8,), (2, 4), (2, 2, 2)])
def test_count_of_the_papers_model_by_formula(branching: tuple[int, ...]) -> None:
    deep = osp.overparametrize(osp.mixture(6, 8, seed=0), branching, init=1e-4)
    assert osp.count_induced_trees(deep) == 8  # one tree per component, the indicator sums being univariate
    assert osp.count_induced_trees(deep, univariate_leaves=False) == 8 * 2**6  # one indicator per variable


def test_induced_trees_rejects_dags_and_too_many_trees() -> None:
    shared = osp.Product([osp.Bernoulli(0), osp.Bernoulli(1)])
    other = osp.Product([osp.Bernoulli(0, 0.3), osp.Bernoulli(1, 0.6)])
    dag = osp.Sum([osp.Sum([shared, other]), osp.Sum([shared])])
    with pytest.raises(StructureError, match="not a tree"):
        osp.induced_trees(dag)
    with pytest.raises(StructureError, match="not a tree"):
        osp.count_induced_trees(dag)
    with pytest.raises(ConfigurationError, match="more than limit=100"):
        osp.induced_trees(osp.mixture(7, 2, seed=0), limit=100, univariate_leaves=False)  # 2 * 2^7 = 256 trees


@pytest.mark.parametrize("branching", [(3, 3), (2, 2), (16,), (), (0, 8), (-2, -4)])
def test_bad_branching_is_a_configuration_error(branching: tuple[int, ...]) -> None:
    with pytest.raises(ConfigurationError, match="branching"):
        osp.overparametrize(osp.mixture(2, 8, seed=0), branching)


def test_phi_and_overparametrize_reject_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="component"):
        osp.phi((2, 2), 4, 0)
    with pytest.raises(ConfigurationError, match="layer"):
        osp.phi((2, 2), 0, 2)
    with pytest.raises(ConfigurationError, match="init"):
        osp.overparametrize(osp.mixture(2, 4, seed=0), (2, 2), init=-1.0)
    with pytest.raises(StructureError, match="sum node at the root"):
        osp.overparametrize(osp.Product([osp.Bernoulli(0)]), (1,))
