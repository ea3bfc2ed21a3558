"""Which nodes of a flat structure may break a rule of validation, found with numpy over all nodes at once.

The result is a superset of the invalid nodes (every node that breaks a rule is among them) that
:func:`overspn.symbolic.validation.check_flat` confirms node by node, and the scope of every node as a canonical id:
a variable for a one-variable scope, else ``D`` + the row of a bitset table ``(scopes, ceil(D / 64))`` of uint64,
shared by every node of the same scope, so scopes take memory per distinct scope, not per node.
"""

from __future__ import annotations

import numpy as np

from overspn.symbolic.csr import edges_of
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, PRODUCT, SUM, FlatStructure

__all__ = ["FlatScopes", "candidate_problems"]


class FlatScopes:
    """The scope of every node of a flat structure as :func:`candidate_problems` computed it."""

    def __init__(self, sid: np.ndarray, rows: np.ndarray, num_vars: int) -> None:
        self._sid, self._rows, self._num_vars = sid, rows, num_vars

    def scope_of(self, index: int) -> frozenset[int]:
        """The scope of node ``index``."""
        s = int(self._sid[index])
        if s < self._num_vars:
            return frozenset((s,))
        row = self._rows[s - self._num_vars]
        return frozenset(np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")).tolist())


def candidate_problems(flat: FlatStructure) -> tuple[np.ndarray, FlatScopes]:
    """Indices of nodes that may break a rule of validation, in order, and the scopes of all nodes."""
    bad = (flat.kind >= SUM) & (flat.count == 0)
    bad |= _leaf_problems(flat)
    bad |= _weight_problems(flat)
    scope_bad, scopes = _scope_problems(flat)
    return np.flatnonzero(bad | scope_bad), scopes


def _leaf_problems(flat: FlatStructure) -> np.ndarray:
    """Leaves whose parameters are out of range, and leaves of a variable that has discrete and continuous ones."""
    kind = flat.kind
    bad = np.zeros(len(flat), bool)
    p = flat.p
    bad |= (kind == BERNOULLI) & ~((p > 0) & (p < 1))
    bad |= (kind == GAUSSIAN) & ~(np.isfinite(flat.mean) & np.isfinite(flat.std) & (flat.std > 0))
    if flat.probs:
        lengths = np.fromiter(map(len, flat.probs), np.int64, len(flat.probs))
        values = np.concatenate(flat.probs)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ok = lengths >= 1
        with np.errstate(invalid="ignore"):
            positive = np.logical_and.reduceat(np.isfinite(values) & (values > 0), starts[ok])
            totals = np.add.reduceat(np.where(np.isfinite(values), values, np.inf), starts[ok])
        fine = np.zeros(len(lengths), bool)
        fine[ok] = positive & (np.abs(totals - 1.0) <= 0.5e-6 * np.maximum(1, lengths[ok]))
        bad[np.flatnonzero(kind == CATEGORICAL)[~fine]] = True
    # a variable has discrete and continuous leaves: every leaf unlike the first leaf of its variable
    leaf_index = np.flatnonzero(kind < SUM)
    if len(leaf_index):
        leaf_var = flat.var[leaf_index]
        continuous = kind[leaf_index] == GAUSSIAN
        first = np.full(int(leaf_var.max()) + 1, -1, np.int64)
        first[leaf_var[::-1]] = leaf_index[::-1]
        bad[leaf_index[continuous != (kind[first[leaf_var]] == GAUSSIAN)]] = True
    return bad


def _weight_problems(flat: FlatStructure) -> np.ndarray:
    """Sums with as many weights as children broken: not one per child, non-finite, negative or all zero."""
    bad = np.zeros(len(flat), bool)
    sums = np.flatnonzero(flat.kind == SUM)
    own = np.diff(flat.weight_ptr)
    bad[sums[own[sums] != flat.count[sums]]] = True
    nonempty = sums[own[sums] > 0]
    if len(nonempty):
        w = flat.own_weights
        starts = flat.weight_ptr[nonempty]
        with np.errstate(invalid="ignore"):
            finite = np.logical_and.reduceat(np.isfinite(w), starts)
            negative = np.logical_or.reduceat(w < 0, starts)
            positive = np.logical_or.reduceat(w > 0, starts)
        bad[nonempty[~finite | negative | ~positive]] = True
    bad[sums[own[sums] == 0]] = True
    return bad


def _scope_problems(flat: FlatStructure) -> tuple[np.ndarray, FlatScopes]:
    """Incomplete sums and non-decomposable products, given the scopes of their children (exact for every node
    whose descendants are valid), computed level by level from the leaves up."""
    kind = flat.kind
    bad = np.zeros(len(flat), bool)
    leaves = kind < SUM
    builder = _ScopeBuilder(flat, int(flat.var.max()) + 1 if leaves.any() else 1)
    level = flat.levels(leaves | (flat.count == 0))
    inner = np.flatnonzero(~leaves & (flat.count > 0))
    by_level = inner[np.argsort(level[inner], kind="stable")]
    bounds = np.searchsorted(level[by_level], np.arange(1, int(level.max(initial=0)) + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        nodes = by_level[lo:hi]
        sums = nodes[kind[nodes] == SUM]
        if len(sums):
            builder.add_sums(sums, bad)
        products = nodes[kind[nodes] == PRODUCT]
        if len(products):
            builder.add_products(products, bad)
    return bad, builder.scopes()


class _ScopeBuilder:
    """The scope ids of a flat structure, filled in one level of nodes at a time (children before parents)."""

    def __init__(self, flat: FlatStructure, num_vars: int) -> None:
        leaves = flat.kind < SUM
        self.flat, self.num_vars = flat, num_vars
        self.words = (num_vars + 63) // 64
        self.sid = np.where(leaves, flat.var, -1)
        self.size = leaves.astype(np.int64)  # the number of variables in each scope
        self.table = np.zeros((16, self.words), np.uint64)  # the bitsets of multi-variable scopes, rows 0 .. used - 1
        self.used = 0
        self.canonical: dict[bytes, int] = {}
        self.bit = np.left_shift(np.uint64(1), (np.arange(64, dtype=np.uint64)))

    def scopes(self) -> FlatScopes:
        return FlatScopes(self.sid, self.table[:self.used], self.num_vars)

    def add_sums(self, sums: np.ndarray, bad: np.ndarray) -> None:
        """A sum has the scope of its first child; it is incomplete when another child's scope differs."""
        flat, sid = self.flat, self.sid
        edges, owner = edges_of(flat.ptr, sums)
        first = sid[flat.child[flat.ptr[sums]]]
        differ = sid[flat.child[edges]] != np.repeat(first, flat.count[sums])
        bad[sums[np.bincount(owner, differ, minlength=len(sums)) > 0]] = True
        sid[sums] = first
        self.size[sums] = self.size[flat.child[flat.ptr[sums]]]

    def add_products(self, products: np.ndarray, bad: np.ndarray) -> None:
        """A product's scope is the union of its children's; it is not decomposable when the union is smaller than
        the sum of their sizes."""
        edges, owner = edges_of(self.flat.ptr, products)
        children = self.flat.child[edges]
        child_sid = self.sid[children]
        expected = np.bincount(owner, self.size[children], minlength=len(products)).astype(np.int64)
        bits = np.zeros((len(products), self.words), np.uint64)
        single = (child_sid >= 0) & (child_sid < self.num_vars)  # (-1: a node without children, itself invalid)
        v = child_sid[single]
        np.bitwise_or.at(bits, (owner[single], v >> 6), self.bit[v & 63])
        composite = np.flatnonzero(child_sid >= self.num_vars)
        if len(composite):
            step = max(1, (1 << 22) // self.words)  # bounds the temporary rows of one bitwise_or.at
            for start in range(0, len(composite), step):
                part = composite[start: start + step]
                np.bitwise_or.at(bits, owner[part], self.table[child_sid[part] - self.num_vars])
        actual = np.bitwise_count(bits).sum(axis=1, dtype=np.int64)
        bad[products[actual != expected]] = True
        self.size[products] = actual
        self.sid[products] = self._canonical_ids(bits, actual)

    def _canonical_ids(self, bits: np.ndarray, population: np.ndarray) -> np.ndarray:
        """The scope id of every bitset row: its variable when it holds one, else its row in the shared table."""
        ids = np.empty(len(bits), np.int64)
        for row, (values, pop) in enumerate(zip(bits, population.tolist())):
            if pop == 1:
                word = int(np.flatnonzero(values)[0])
                ids[row] = word * 64 + int(values[word]).bit_length() - 1
                continue
            key = values.tobytes()
            found = self.canonical.get(key)
            if found is None:
                found = self.canonical[key] = self.num_vars + self.used
                if self.used == len(self.table):
                    self.table = np.concatenate([self.table, np.zeros_like(self.table)])
                self.table[self.used] = values
                self.used += 1
            ids[row] = found
        return ids
