"""Chow-Liu trees: mutual information against a slow reference, spanning trees against brute force and scipy,
structure recovery from samples of known trees, rooting, and error messages."""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_minimum_spanning_tree

from overspn.errors import ConfigurationError, DataError
from overspn.symbolic import chow_liu
from overspn.symbolic.chow_liu import (
    chow_liu_tree,
    maximum_spanning_tree,
    orient_tree,
    pairwise_mutual_information,
    tree_center,
)


def reference_mutual_information(data: np.ndarray, cardinalities: list[int], pseudocount: float) -> np.ndarray:
    """Pair by pair, state by state, from the rows where both columns are observed (the documented convention)."""
    num_columns = data.shape[1]
    result = np.zeros((num_columns, num_columns))
    for i, j in itertools.combinations(range(num_columns), 2):
        rows = [row for row in data if not (math.isnan(row[i]) or math.isnan(row[j]))]
        ci, cj = cardinalities[i], cardinalities[j]
        joint = np.full((ci, cj), pseudocount / (ci * cj))
        for row in rows:
            joint[int(row[i]), int(row[j])] += 1
        total = len(rows) + pseudocount
        if total == 0:
            continue
        joint /= total
        value = 0.0
        for s in range(ci):
            for t in range(cj):
                if joint[s, t] > 0:
                    value += joint[s, t] * math.log(joint[s, t] / (joint[s, :].sum() * joint[:, t].sum()))
        result[i, j] = result[j, i] = value
    return result


def random_data(rng: np.random.Generator, cardinalities: list[int], num_rows: int, missing: float) -> np.ndarray:
    data = np.stack([rng.integers(0, c, size=num_rows) for c in cardinalities], axis=1).astype(float)
    # Correlate neighbouring columns a little so the MI values are not all near zero.
    copy = rng.random(data.shape) < 0.4
    copy[:, 0] = False
    shifted = np.minimum(np.roll(data, 1, axis=1), np.asarray(cardinalities) - 1)
    data = np.where(copy, shifted, data)
    data[rng.random(data.shape) < missing] = np.nan
    return data


@pytest.mark.parametrize("cardinalities", [[2, 2, 2, 2, 2], [3, 2, 4, 5, 3, 2]])
@pytest.mark.parametrize("missing", [0.0, 0.25])
@pytest.mark.parametrize("pseudocount", [0.0, 0.5, 1.0, 3.0])
def test_mutual_information_matches_slow_reference(cardinalities, missing, pseudocount):
    rng = np.random.default_rng(len(cardinalities) * 100 + int(missing * 10) + int(pseudocount * 7))
    data = random_data(rng, cardinalities, num_rows=60, missing=missing)
    computed = pairwise_mutual_information(data, np.asarray(cardinalities), pseudocount)
    expected = reference_mutual_information(data, cardinalities, pseudocount)
    np.testing.assert_allclose(computed, expected, rtol=1e-10, atol=1e-13)


def test_unseen_states_count_through_the_given_cardinalities():
    data = np.array([[0, 1], [1, 0], [1, 1], [0, 0], [1, 1]])
    computed = pairwise_mutual_information(data, np.array([2, 4]), pseudocount=2.0)
    np.testing.assert_allclose(computed, reference_mutual_information(data.astype(float), [2, 4], 2.0), rtol=1e-12)
    inferred = pairwise_mutual_information(data, pseudocount=2.0)
    assert not np.isclose(computed[0, 1], inferred[0, 1])


def test_mutual_information_is_symmetric_non_negative_with_zero_diagonal():
    rng = np.random.default_rng(0)
    data = random_data(rng, [4, 3, 2, 5, 2, 3, 4], num_rows=200, missing=0.1)
    mutual_information = pairwise_mutual_information(data)
    assert mutual_information.shape == (7, 7) and mutual_information.dtype == np.float64
    np.testing.assert_array_equal(mutual_information, mutual_information.T)
    assert (mutual_information >= -1e-12).all()
    np.testing.assert_array_equal(np.diag(mutual_information), 0.0)
    assert mutual_information[0, 1] > 0


def test_identical_columns_without_smoothing_give_the_entropy():
    column = np.array([0, 1, 1, 2, 2, 2])
    mutual_information = pairwise_mutual_information(np.stack([column, column], axis=1), pseudocount=0.0)
    probabilities = np.array([1, 2, 3]) / 6
    assert mutual_information[0, 1] == pytest.approx(-(probabilities * np.log(probabilities)).sum(), rel=1e-12)


def test_pair_with_no_complete_rows_and_no_smoothing_is_zero():
    data = np.array([[0.0, np.nan, 1.0], [np.nan, 1.0, 0.0], [1.0, np.nan, 1.0]])
    mutual_information = pairwise_mutual_information(data, pseudocount=0.0)
    assert mutual_information[0, 1] == 0.0
    assert np.isfinite(mutual_information).all()


def test_integer_bool_and_float_inputs_agree():
    rng = np.random.default_rng(1)
    binary = rng.random((50, 4)) < 0.5
    binary[:, 1] = binary[:, 0] ^ (rng.random(50) < 0.1)
    expected = pairwise_mutual_information(binary.astype(np.int8))
    np.testing.assert_array_equal(pairwise_mutual_information(binary), expected)
    np.testing.assert_array_equal(pairwise_mutual_information(binary.astype(np.float32)), expected)


def test_row_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(2)
    data = random_data(rng, [3, 2, 4, 2], num_rows=301, missing=0.0)
    data[150:200][rng.random((50, 4)) < 0.3] = np.nan  # some chunks complete, some with missing entries
    whole = pairwise_mutual_information(data)
    np.testing.assert_allclose(whole, reference_mutual_information(data, [3, 2, 4, 2], 1.0), rtol=1e-10)
    monkeypatch.setattr(chow_liu, "_CHUNK_ELEMENTS", 7 * 16)  # 7 rows per chunk, the last one partial
    np.testing.assert_allclose(pairwise_mutual_information(data), whole, rtol=1e-13, atol=1e-15)


def tree_weight(weights: np.ndarray, edges) -> float:
    return float(sum(weights[u, v] for u, v in edges))


def is_spanning_tree(edges, num_nodes: int) -> bool:
    component = list(range(num_nodes))

    def find(node: int) -> int:
        while component[node] != node:
            node = component[node]
        return node

    for u, v in edges:
        root_u, root_v = find(u), find(v)
        if root_u == root_v:
            return False
        component[root_u] = root_v
    return len(edges) == num_nodes - 1


def random_symmetric(rng: np.random.Generator, size: int, integer: bool = False) -> np.ndarray:
    # Small integer weights produce many ties, which the brute force must still agree with.
    raw = rng.integers(0, 4, size=(size, size)).astype(float) if integer else rng.random((size, size))
    weights = np.triu(raw, 1)
    return weights + weights.T


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("integer", [False, True])
def test_spanning_tree_is_maximal_by_brute_force(size, integer):
    rng = np.random.default_rng(size * 10 + integer)
    all_pairs = list(itertools.combinations(range(size), 2))
    for _ in range(5):
        weights = random_symmetric(rng, size, integer) - 1.5  # negative weights too
        edges = maximum_spanning_tree(weights)
        assert is_spanning_tree(edges, size)
        assert all(u < v for u, v in edges)
        best = max(tree_weight(weights, subset) for subset in itertools.combinations(all_pairs, size - 1)
                   if is_spanning_tree(subset, size))
        assert tree_weight(weights, edges) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("size", [10, 37, 120])
def test_spanning_tree_matches_scipy(size):
    rng = np.random.default_rng(size)
    weights = random_symmetric(rng, size) + 0.1  # scipy reads 0 as "no edge": keep every negated weight non-zero
    edges = maximum_spanning_tree(weights)
    reference = scipy_minimum_spanning_tree(-weights).tocoo()
    assert tree_weight(weights, edges) == pytest.approx(-reference.data.sum(), rel=1e-12)
    # Continuous random weights have a unique optimum, so the edge sets agree as well.
    assert set(edges) == {(min(u, v), max(u, v)) for u, v in zip(reference.row.tolist(), reference.col.tolist())}


def test_spanning_tree_ties_are_deterministic():
    assert maximum_spanning_tree(np.ones((4, 4))) == [(0, 1), (0, 2), (0, 3)]
    assert maximum_spanning_tree(np.zeros((1, 1))) == []


def sample_tree_network(rng: np.random.Generator, parents: list[int], num_states: int, num_rows: int) -> np.ndarray:
    """Ancestral sampling from a tree-shaped network in which a child copies its parent with probability 0.8."""
    data = np.zeros((num_rows, len(parents)), dtype=np.int64)
    pending = list(range(len(parents)))
    done: set[int] = set()
    while pending:
        node = next(v for v in pending if parents[v] < 0 or parents[v] in done)
        if parents[node] < 0:
            data[:, node] = rng.integers(0, num_states, size=num_rows)
        else:
            noise = rng.integers(0, num_states, size=num_rows)
            data[:, node] = np.where(rng.random(num_rows) < 0.8, data[:, parents[node]], noise)
        pending.remove(node)
        done.add(node)
    return data


def undirected(parents) -> set[tuple[int, int]]:
    return {(min(v, p), max(v, p)) for v, p in enumerate(parents) if p >= 0}


@pytest.mark.parametrize("num_states", [2, 3])
@pytest.mark.parametrize(
    "true_parents",
    [
        [2, 5, -1, 0, 1, 3],  # chain 4-1-5-3-0-2, labels shuffled
        [3, 3, 3, -1, 3, 3],  # star around 3
        [-1, 0, 0, 1, 1, 2],  # binary tree
    ],
)
def test_recovers_the_tree_of_a_known_network(true_parents, num_states):
    rng = np.random.default_rng(1234)
    data = sample_tree_network(rng, true_parents, num_states, num_rows=20_000)
    learned = chow_liu_tree(data)
    assert set(learned.edges) == undirected(true_parents)
    data = data.astype(float)
    data[rng.random(data.shape) < 0.1] = np.nan
    assert set(chow_liu_tree(data).edges) == undirected(true_parents)


def random_tree_edges(rng: np.random.Generator, num_nodes: int) -> list[tuple[int, int]]:
    labels = rng.permutation(num_nodes)
    return [(int(labels[rng.integers(0, node)]), int(labels[node])) for node in range(1, num_nodes)]


def height(edges, num_nodes: int, root: int) -> int:
    parents, order = orient_tree(edges, num_nodes, root)
    depth = {int(order[0]): 0}
    for node in order[1:]:
        depth[int(node)] = depth[int(parents[node])] + 1
    return max(depth.values())


@pytest.mark.parametrize("num_nodes", [1, 2, 3, 5, 8, 13])
def test_orient_tree_and_centre(num_nodes):
    rng = np.random.default_rng(num_nodes)
    for _ in range(10):
        edges = random_tree_edges(rng, num_nodes)
        for root in range(num_nodes):
            parents, order = orient_tree(edges, num_nodes, root)
            assert order[0] == root and sorted(order.tolist()) == list(range(num_nodes))
            assert parents[root] == -1 and (np.delete(parents, root) >= 0).all()
            position = np.empty(num_nodes, dtype=int)
            position[order] = np.arange(num_nodes)
            assert all(position[parents[v]] < position[v] for v in range(num_nodes) if v != root)
            assert undirected(parents) == {(min(u, v), max(u, v)) for u, v in edges}
        centre = tree_center(edges, num_nodes)
        assert height(edges, num_nodes, centre) == min(height(edges, num_nodes, r) for r in range(num_nodes))


def test_chow_liu_tree_fields_are_consistent():
    rng = np.random.default_rng(5)
    data = sample_tree_network(rng, [-1, 0, 1, 2, 3, 4, 5, 6, 7], num_states=2, num_rows=5000)  # a chain
    tree = chow_liu_tree(data)
    assert tree.root == 4 and tree.height == 4  # the middle of a 9-node chain
    assert tree.parents[tree.root] == -1 and tree.num_nodes == 9
    for node in tree.order[1:]:
        assert tree.depth[node] == tree.depth[tree.parents[node]] + 1
    assert [level.tolist() for level in tree.levels] == [[4], [3, 5], [2, 6], [1, 7], [0, 8]]
    np.testing.assert_array_equal(np.concatenate(tree.levels), tree.order)
    np.testing.assert_array_equal(tree.mutual_information, pairwise_mutual_information(data))
    with pytest.raises(ValueError):
        tree.parents[0] = 3  # read-only
    rerooted = chow_liu_tree(data, root=0)
    assert rerooted.root == 0 and rerooted.height == 8 and rerooted.edges == tree.edges
    single = chow_liu_tree(np.array([[0], [1]]))
    assert single.edges == [] and single.parents.tolist() == [-1] and len(single.levels) == 1


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "message"),
    [
        (np.array([[0, 0.5]]), {}, DataError, "non-integer state 0.5 at row 0, column 1"),
        (np.array([[0, -1]]), {}, DataError, "negative state"),
        (np.array([[0, np.inf]]), {}, DataError, "infinite value"),
        (np.array([[0, 3]]), {"cardinalities": np.array([2, 3])}, DataError, "column 1 has state 3 >= its cardinality"),
        (np.zeros((0, 3)), {}, DataError, "0 rows"),
        (np.zeros((4, 0)), {}, DataError, "no columns"),
        (np.zeros(4), {}, DataError, "2-D"),
        (np.array([["a", "b"]]), {}, DataError, "dtype"),
        (np.zeros((2, 2)), {"pseudocount": -1.0}, ConfigurationError, "pseudocount"),
        (np.zeros((2, 2)), {"pseudocount": float("nan")}, ConfigurationError, "pseudocount"),
        (np.zeros((2, 2)), {"pseudocount": "x"}, ConfigurationError, "pseudocount"),
        (np.zeros((2, 2)), {"cardinalities": np.array([2, 0])}, ConfigurationError, "cardinalities"),
        (np.zeros((2, 2)), {"cardinalities": np.array([2, 2, 2])}, ConfigurationError, "shape"),
    ],
)
def test_bad_data_and_options(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        pairwise_mutual_information(data, **kwargs)
    with pytest.raises(error, match=message):
        chow_liu_tree(data, **kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: maximum_spanning_tree(np.zeros((2, 3))), DataError, "square"),
        (lambda: maximum_spanning_tree(np.zeros((0, 0))), DataError, "no nodes"),
        (lambda: maximum_spanning_tree(np.array([[0, np.nan], [np.nan, 0]])), DataError, "finite"),
        (lambda: maximum_spanning_tree(np.array([[0, 1.0], [2.0, 0]])), DataError, "symmetric"),
        (lambda: orient_tree([(0, 1)], 3), DataError, "has 2 edges, got 1"),
        (lambda: orient_tree([(0, 1), (1, 0)], 3), DataError, "do not form a tree"),
        (lambda: orient_tree([(0, 1), (1, 3)], 3), DataError, r"edge \(1, 3\)"),
        (lambda: orient_tree([(0, 1)], 2, root=2), ConfigurationError, "root"),
        (lambda: orient_tree([], 0), ConfigurationError, "num_nodes"),
        (lambda: orient_tree([(0, 1)], 2, root="a"), ConfigurationError, "root"),
        (lambda: chow_liu_tree(np.zeros((3, 2)), root=2), ConfigurationError, "root"),
        (lambda: chow_liu_tree(np.zeros((3, 2)), root=1.5), ConfigurationError, "root"),
    ],
)
def test_bad_trees_and_roots(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_module_needs_neither_torch_nor_scipy():
    tree = ast.parse(Path(chow_liu.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"torch", "scipy"}
