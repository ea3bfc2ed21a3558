"""Children as compressed sparse rows (CSR: node ``i``'s children are ``child[ptr[i]:ptr[i + 1]]``): the edges of a
set of nodes, renumbering the nodes, and the depth-first post-order that numbers a structure's nodes like
:func:`~overspn.symbolic.nodes.topological_order` does. Plain numpy, shared by the flat form, model files and the
compiled program.
"""

from __future__ import annotations

import numpy as np

__all__ = ["edges_of", "permute", "tree_postorder", "postorder"]


def edges_of(ptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edge indices of ``nodes`` (CSR ``ptr``) in order, and for each the position of its node in ``nodes``."""
    lo, count = ptr[nodes], ptr[nodes + 1] - ptr[nodes]
    total = int(count.sum())
    owner = np.repeat(np.arange(len(nodes)), count)
    starts = np.cumsum(count) - count
    return lo[owner] + np.arange(total) - starts[owner], owner


def permute(ptr: np.ndarray, child: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR children renumbered so that node ``order[i]`` becomes node ``i`` (``order`` may leave out nodes that no
    kept node has as a child)."""
    rank = np.full(len(ptr) - 1, -1, np.int64)
    rank[order] = np.arange(len(order))
    edges, _ = edges_of(ptr, order)
    count = ptr[order + 1] - ptr[order]
    new_ptr = np.zeros(len(order) + 1, np.int64)
    np.cumsum(count, out=new_ptr[1:])
    return new_ptr, rank[child[edges]]


def tree_postorder(ptr: np.ndarray, child: np.ndarray, bounds: list[int]) -> np.ndarray | None:
    """:func:`postorder` from node 0 of a tree numbered breadth-first (level ``k``: nodes ``bounds[k]`` to
    ``bounds[k + 1]``), with numpy one level at a time: subtree sizes bottom-up, then each node's first position
    top-down; None when some node has two parents (a DAG: the first visit decides, which needs the walk)."""
    n = len(ptr) - 1
    parents = np.bincount(child, minlength=n)
    if parents[0] or (parents > 1).any():  # the root has a parent: a cycle
        return None
    count = np.diff(ptr)
    parent = np.repeat(np.arange(n), count)
    size = np.ones(n, np.int64)
    for lo, hi in zip(bounds[-2::-1], bounds[:0:-1]):
        e_lo, e_hi = ptr[lo], ptr[hi]
        if e_lo < e_hi:
            size[lo:hi] += np.bincount(parent[e_lo:e_hi] - lo, size[child[e_lo:e_hi]], minlength=hi - lo
                                       ).astype(np.int64)
    start = np.zeros(n, np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        e_lo, e_hi = ptr[lo], ptr[hi]
        if e_lo == e_hi:
            continue
        c, p = child[e_lo:e_hi], parent[e_lo:e_hi]
        before = np.cumsum(size[c]) - size[c]
        start[c] = start[p] + before - before[ptr[p] - e_lo]
    order = np.empty(n, np.int64)
    order[start + size - 1] = np.arange(n)
    return order


def postorder(ptr: np.ndarray, child: np.ndarray, root: int) -> np.ndarray | None:
    """Depth-first post-order from ``root`` (children in order, each node at its first visit), as
    :func:`~overspn.symbolic.nodes.topological_order` visits nodes; None when there is a cycle."""
    n = len(ptr) - 1
    count = np.diff(ptr)
    # nodes whose children are all leaves with no other parent: their block of the order is known at once
    single_leaf = ((count == 0) & (np.bincount(child, minlength=n) == 1))[child]
    parent = np.repeat(np.arange(n), count)
    simple = (count > 0) & (np.bincount(parent, ~single_leaf, minlength=n) == 0)
    simple_list = simple.tolist()
    starts, targets = ptr.tolist(), child.tolist()
    state = bytearray(n)  # 0 new, 1 on the stack, 2 done
    order: list[int] = []
    append, extend = order.append, order.extend
    if simple_list[root]:
        return np.array(targets[starts[root]: starts[root + 1]] + [root], np.int64)
    stack, position = [root], [starts[root]]
    state[root] = 1
    while stack:
        node = stack[-1]
        k, end = position[-1], starts[node + 1]
        while k < end:
            c = targets[k]
            k += 1
            s = state[c]
            if s == 0:
                if starts[c] == starts[c + 1]:  # a leaf: done at once
                    state[c] = 2
                    append(c)
                    continue
                if simple_list[c]:  # its children are its own leaves: done at once
                    extend(targets[starts[c]: starts[c + 1]])
                    state[c] = 2
                    append(c)
                    continue
                break
            if s == 1:
                return None
        else:
            stack.pop()
            position.pop()
            state[node] = 2
            append(node)
            continue
        position[-1] = k
        state[c] = 1
        stack.append(c)
        position.append(starts[c])
    return np.array(order, np.int64)
