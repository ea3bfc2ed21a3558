"""Interleaved wall-clock timing: the one way every benchmark here times functions against each other.

All functions are called once per round, in an order drawn afresh (from a fixed seed) every round, so that they
share the machine's background load and none always runs right after the same neighbour (whose memory traffic or
freed allocations would otherwise be charged to it in every round).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def interleaved_timings(functions: dict[str, Callable[[], object]], repeats: int, warmup: int,
                        budget_s: float | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Wall times in ms of every function over ``repeats`` rounds after ``warmup`` untimed ones; with ``budget_s``
    the rounds stop early (after at least 3) once the timed calls have taken that many seconds."""
    names = list(functions)
    order = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    spent = 0.0
    for round_number in range(warmup + repeats):
        for name in order.sample(names, len(names)):
            start = time.perf_counter()
            functions[name]()
            elapsed = time.perf_counter() - start
            if round_number >= warmup:
                times[name].append(elapsed * 1e3)
                spent += elapsed
        if budget_s is not None and round_number >= warmup + 2 and spent > budget_s:
            break
    return times
