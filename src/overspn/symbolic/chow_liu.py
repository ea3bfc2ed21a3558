"""Chow-Liu trees: the maximum-likelihood tree-shaped Bayesian network over discrete variables.

Chow & Liu (1968) showed that the best tree is the maximum spanning tree of the pairwise mutual-information graph.
This module computes that matrix from data (vectorised, chunked over rows, tolerant of missing values), finds the
spanning tree with Prim's algorithm and orients it from a root; it is the backbone of hidden Chow-Liu trees (HCLT,
Liu & Van den Broeck 2021). Only numpy is used, so the structure can be learned without torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigurationError, DataError

__all__ = [
    "ChowLiuTree",
    "chow_liu_tree",
    "maximum_spanning_tree",
    "orient_tree",
    "pairwise_mutual_information",
    "tree_center",
]

# Upper bound on the entries of one row chunk's one-hot matrix (float32, so 16 MiB). It also keeps every per-chunk
# count below 2**24, where float32 matrix products still count exactly.
_CHUNK_ELEMENTS = 1 << 22


def _validated_data(data: np.ndarray) -> np.ndarray:
    """The data as a 2-D integer or float array (NaN where missing), checked without copying it to float64."""
    array = np.asarray(data)
    if array.ndim != 2:
        raise DataError(f"data must be a 2-D array (rows, columns), got shape {array.shape}")
    if array.shape[1] < 1:
        raise DataError("data has no columns: at least 1 variable is needed")
    if array.shape[0] == 0:
        raise DataError("data is empty: it has 0 rows")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise DataError(f"data must hold integer states (or NaN for missing), got dtype {array.dtype}")
    # Integer data only needs its minimum checked; the element-wise masks are built for float data alone.
    if array.dtype.kind == "u" or (array.dtype.kind == "i" and array.min() >= 0):
        return array
    checks = [(lambda: array < 0, "negative state")]
    if array.dtype.kind == "f":
        checks = [(lambda: np.isinf(array), "infinite value"),
                  (lambda: (np.floor(array) != array) & ~np.isnan(array), "non-integer state"), *checks]
    for find_bad, what in checks:
        bad = find_bad()
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise DataError(f"data has a {what} {array[row, column].item()!r} at row {row}, column {column}")
    return array


def _validated_cardinalities(cardinalities: np.ndarray | None, array: np.ndarray) -> np.ndarray:
    """Number of states per column; inferred as (largest observed state + 1), at least 1, when not given."""
    # fmax skips NaN; a column with no observed entry comes out NaN and counts as having largest state -1.
    largest = np.nan_to_num(np.fmax.reduce(array, axis=0).astype(np.float64), nan=-1.0).astype(np.int64)
    num_columns = array.shape[1]
    if cardinalities is None:
        return np.maximum(largest + 1, 1)
    given = np.asarray(cardinalities)
    if given.ndim == 0:
        given = np.full(num_columns, given)
    if given.shape != (num_columns,):
        raise ConfigurationError(f"cardinalities must have shape ({num_columns},), one per column, got {given.shape}")
    if given.dtype.kind not in "iu" or (given < 1).any():
        raise ConfigurationError(f"cardinalities must be integers >= 1, got {given.tolist()}")
    given = given.astype(np.int64)
    too_large = largest >= given
    if too_large.any():
        column = int(np.flatnonzero(too_large)[0])
        raise DataError(f"column {column} has state {largest[column]} >= its cardinality {given[column]}")
    return given


def _pair_counts(array: np.ndarray, num_states: int) -> np.ndarray:
    """Joint counts ``(D, D, C, C)``: entry ``[i, j, s, t]`` counts the rows with ``x_i = s`` and ``x_j = t``.

    Each variable is encoded by C columns, ``[observed, x = 1, ..., x = C - 1]`` (states padded to C), and the counts
    come from the Gram matrix of that encoding: the state-0 counts follow by subtraction, since a row observed at
    ``x`` is in exactly one state. Where a chunk has no missing entry the ``observed`` column is all ones and its
    products are column sums, so only the indicators are multiplied: ``X^T X`` alone for binary data, a quarter of
    a full one-hot product. A missing entry has ``observed = 0`` and no indicator, so it drops out of its pairs.
    """
    num_rows, num_columns = array.shape
    others = num_states - 1
    gram = np.zeros((num_columns, num_states, num_columns, num_states), dtype=np.float64)
    chunk_rows = max(1, _CHUNK_ELEMENTS // (num_columns * num_states))
    for start in range(0, num_rows, chunk_rows):
        chunk = array[start:start + chunk_rows]
        size = len(chunk)
        chunk_observed = ~np.isnan(chunk) if chunk.dtype.kind == "f" else None
        # NaN equals no state, so a missing entry gets no indicator.
        indicators = chunk[:, :, None] == np.arange(1, num_states)
        if chunk_observed is None or chunk_observed.all():
            flat = indicators.reshape(size, num_columns * others).astype(np.float32)
            sums = flat.sum(axis=0, dtype=np.float64).reshape(num_columns, others)
            gram[:, 0, :, 0] += size
            gram[:, 0, :, 1:] += sums[None, :, :]
            gram[:, 1:, :, 0] += sums[:, :, None]
            gram[:, 1:, :, 1:] += (flat.T @ flat).astype(np.float64).reshape(num_columns, others, num_columns, others)
        else:
            encoded = np.concatenate([chunk_observed[:, :, None], indicators], axis=2)
            flat = encoded.reshape(size, num_columns * num_states).astype(np.float32)
            gram += (flat.T @ flat).astype(np.float64).reshape(num_columns, num_states, num_columns, num_states)
    # Basis change from [observed, indicators] to states: count(0) = count(observed) - sum of the other states.
    to_states = np.eye(num_states)
    to_states[0, 1:] = -1.0
    return np.einsum("as,isjt,bt->ijab", to_states, gram, to_states, optimize=True)


def pairwise_mutual_information(data: np.ndarray, cardinalities: np.ndarray | None = None,
                                pseudocount: float = 1.0) -> np.ndarray:
    """Mutual information (nats) between every pair of discrete columns of ``data``; a symmetric (D, D) matrix.

    ``data`` is (N, D) with states ``0 .. cardinality - 1`` (integers, or integral floats); NaN marks a missing entry.
    For a pair (i, j), only the rows where both columns are observed are counted, so each pair is estimated from its
    own complete rows. ``cardinalities`` (one per column, or one for all) defaults to the largest observed state + 1.

    Smoothing follows ChowLiuTrees.jl, the implementation behind HCLT (Liu & Van den Broeck 2021): a total Laplace
    pseudocount ``a`` is spread uniformly over the joint table, so with ``n`` complete rows for the pair,
    ``p(x_i=s, x_j=t) = (count(s, t) + a / (C_i * C_j)) / (n + a)``. The marginals are the sums of that joint table,
    so every pair is the mutual information of a proper distribution and is >= 0. A pair with no probability mass
    (no complete rows and ``pseudocount == 0``) gets 0. The diagonal is 0 by convention (not the entropy): a
    variable is never its own neighbour in the tree.

    Counts come from matrix products over chunks of rows (see :func:`_pair_counts`; for fully observed binary data a
    single ``X^T X``), so the cost is O(N D^2 C^2) in BLAS and the memory O(D^2 C^2) plus one chunk.
    """
    array = _validated_data(data)
    pseudocount = _validated_pseudocount(pseudocount)
    cards = _validated_cardinalities(cardinalities, array)
    # States are padded to the largest cardinality so every pair's table has the same (C, C) shape.
    num_states = int(cards.max())
    joint = _pair_counts(array, num_states)
    state_ids = np.arange(num_states)
    valid_state = state_ids[None, :] < cards[:, None]
    valid_cell = valid_state[:, None, :, None] & valid_state[None, :, None, :]
    cell_pseudocount = pseudocount / np.outer(cards, cards).astype(np.float64)
    smoothed = joint + valid_cell * cell_pseudocount[:, :, None, None]
    mass = smoothed.sum(axis=(2, 3))
    safe_mass = np.where(mass > 0, mass, 1.0)
    joint_probability = smoothed / safe_mass[:, :, None, None]
    marginal_i = joint_probability.sum(axis=3)
    marginal_j = joint_probability.sum(axis=2)
    independent = marginal_i[:, :, :, None] * marginal_j[:, :, None, :]
    positive = joint_probability > 0
    # 0 log 0 = 0; where the joint is positive both marginals are too, so the ratio is finite.
    ratio = np.divide(joint_probability, independent, out=np.ones_like(joint_probability), where=positive)
    terms = joint_probability * np.log(ratio, out=np.zeros_like(ratio), where=positive)
    upper = np.triu(terms.sum(axis=(2, 3)), k=1)
    # Mirroring makes the matrix exactly symmetric; clipping removes round-off below 0.
    return np.maximum(upper + upper.T, 0.0)


def _validated_pseudocount(pseudocount: float) -> float:
    try:
        value = float(pseudocount)
    except (TypeError, ValueError):
        raise ConfigurationError(f"pseudocount must be a number >= 0, got {pseudocount!r}") from None
    if not np.isfinite(value) or value < 0:
        raise ConfigurationError(f"pseudocount must be a finite number >= 0, got {pseudocount!r}")
    return value


def maximum_spanning_tree(weights: np.ndarray) -> list[tuple[int, int]]:
    """Edges of a maximum-weight spanning tree of the complete graph with symmetric ``weights`` (D, D).

    Prim's algorithm on the dense matrix: O(D^2) time, each step a vectorised update of the best link from the tree
    to every outside node. Ties are broken deterministically: the tree grows from node 0, the outside node with the
    lowest index wins among equal weights, and it links to the earliest-added tree node with that weight. Returns the
    D - 1 edges as ``(smaller, larger)`` node pairs, in the order they were added. The diagonal is ignored.
    """
    matrix = np.asarray(weights, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DataError(f"weights must be a square (D, D) matrix, got shape {matrix.shape}")
    num_nodes = matrix.shape[0]
    if num_nodes < 1:
        raise DataError("weights has no nodes: at least 1 is needed")
    if not np.isfinite(matrix).all():
        raise DataError("weights must be finite (no NaN or infinity)")
    if not np.allclose(matrix, matrix.T, rtol=1e-9, atol=1e-12):
        raise DataError("weights must be symmetric")
    in_tree = np.zeros(num_nodes, dtype=bool)
    in_tree[0] = True
    best_weight = matrix[0].copy()
    best_link = np.zeros(num_nodes, dtype=np.int64)
    edges: list[tuple[int, int]] = []
    for _ in range(num_nodes - 1):
        # Weights are finite, so -inf only marks nodes already in the tree; argmax returns the lowest index on ties.
        newcomer = int(np.argmax(np.where(in_tree, -np.inf, best_weight)))
        link = int(best_link[newcomer])
        edges.append((min(link, newcomer), max(link, newcomer)))
        in_tree[newcomer] = True
        improves = ~in_tree & (matrix[newcomer] > best_weight)
        best_weight[improves] = matrix[newcomer, improves]
        best_link[improves] = newcomer
    return edges


def orient_tree(edges: Iterable[tuple[int, int]], num_nodes: int, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Root the undirected tree ``edges`` at ``root``: returns ``(parents, order)``.

    ``parents[v]`` is v's parent (-1 for the root); ``order`` is a breadth-first order starting at the root, so
    every parent comes before its children and depths never decrease. Neighbours are visited by increasing index.
    """
    if not _is_integer(num_nodes) or num_nodes < 1:
        raise ConfigurationError(f"num_nodes must be an integer >= 1, got {num_nodes!r}")
    num_nodes = int(num_nodes)
    if not _is_integer(root) or not 0 <= root < num_nodes:
        raise ConfigurationError(f"root must be a node id in [0, {num_nodes}), got {root!r}")
    edge_list = [(int(u), int(v)) for u, v in edges]
    if len(edge_list) != num_nodes - 1:
        raise DataError(f"a tree over {num_nodes} nodes has {num_nodes - 1} edges, got {len(edge_list)}")
    neighbours: list[list[int]] = [[] for _ in range(num_nodes)]
    for u, v in edge_list:
        if not (0 <= u < num_nodes and 0 <= v < num_nodes) or u == v:
            raise DataError(f"edge ({u}, {v}) is not between two distinct nodes in [0, {num_nodes})")
        neighbours[u].append(v)
        neighbours[v].append(u)
    parents = np.full(num_nodes, -2, dtype=np.int64)  # -2: not reached yet
    parents[root] = -1
    order = [int(root)]
    queue = deque(order)
    while queue:
        node = queue.popleft()
        for neighbour in sorted(neighbours[node]):
            if parents[neighbour] == -2:
                parents[neighbour] = node
                order.append(neighbour)
                queue.append(neighbour)
    if len(order) != num_nodes:
        # n - 1 edges that do not reach every node must contain a cycle (or a repeated edge).
        raise DataError(f"edges do not form a tree: only {len(order)} of {num_nodes} nodes reachable from {root}")
    return parents, np.asarray(order, dtype=np.int64)


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _depths(parents: np.ndarray, order: np.ndarray) -> np.ndarray:
    depth = np.zeros(len(parents), dtype=np.int64)
    for node in order[1:]:
        depth[node] = depth[parents[node]] + 1
    return depth


def tree_center(edges: Iterable[tuple[int, int]], num_nodes: int) -> int:
    """A centre of the tree: the root that minimises its height (ceil(diameter / 2)); the lower id of two centres.

    Found with two breadth-first searches: the far end ``b`` of a longest path from ``a`` (itself farthest from node
    0), then the middle of the path from ``b`` back to ``a``.
    """
    edge_list = list(edges)
    parents, order = orient_tree(edge_list, num_nodes, root=0)
    far_end = int(np.argmax(_depths(parents, order)))
    parents, order = orient_tree(edge_list, num_nodes, root=far_end)
    depth = _depths(parents, order)
    other_end = int(np.argmax(depth))
    path = [other_end]
    while parents[path[-1]] >= 0:
        path.append(int(parents[path[-1]]))
    length = int(depth[other_end])
    return min(path[length // 2], path[(length + 1) // 2])


@dataclass(frozen=True, eq=False)
class ChowLiuTree:
    """A Chow-Liu tree rooted for evaluation; arrays are read-only.

    ``parents``: parent of each node (-1 at the root). ``order``: breadth-first order, parents before children.
    ``depth``: distance from the root per node. ``levels``: node ids grouped by depth (``levels[0]`` is the root), in
    ``order``. ``mutual_information``: the (D, D) matrix the tree maximises. ``edges``: undirected ``(smaller,
    larger)`` pairs from :func:`maximum_spanning_tree`.
    """

    parents: np.ndarray
    order: np.ndarray
    depth: np.ndarray
    levels: list[np.ndarray]
    mutual_information: np.ndarray
    edges: list[tuple[int, int]]

    @property
    def root(self) -> int:
        return int(self.order[0])

    @property
    def height(self) -> int:
        return len(self.levels) - 1

    @property
    def num_nodes(self) -> int:
        return len(self.parents)


def chow_liu_tree(data: np.ndarray, cardinalities: np.ndarray | None = None, pseudocount: float = 1.0,
                  root: int | None = None) -> ChowLiuTree:
    """Learn the Chow-Liu tree of ``data`` (see :func:`pairwise_mutual_information` for data, missing values,
    cardinalities and smoothing) and root it.

    With ``root=None`` the root is a centre of the tree (:func:`tree_center`), the node that minimises the tree's
    height: a circuit evaluated level by level then needs the fewest layers. The tree structure (the edges) does not
    depend on the root.
    """
    mutual_information = pairwise_mutual_information(data, cardinalities, pseudocount)
    num_nodes = mutual_information.shape[0]
    edges = maximum_spanning_tree(mutual_information)
    if root is None:
        root = tree_center(edges, num_nodes)
    elif not _is_integer(root) or not 0 <= root < num_nodes:
        raise ConfigurationError(f"root must be a column index in [0, {num_nodes}), got {root!r}")
    parents, order = orient_tree(edges, num_nodes, root=int(root))
    depth = _depths(parents, order)
    # Breadth-first order has non-decreasing depth, so each level is a contiguous slice of it.
    levels = np.split(order, np.flatnonzero(np.diff(depth[order])) + 1)
    for array in (parents, order, depth, mutual_information, *levels):
        array.setflags(write=False)
    return ChowLiuTree(parents=parents, order=order, depth=depth, levels=levels,
                       mutual_information=mutual_information, edges=edges)
