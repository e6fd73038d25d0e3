"""How a batch is cut into chunks: enough to keep every worker busy, few enough to
keep per-chunk overhead (a Ray hop, about a millisecond) negligible."""

from __future__ import annotations

import math

# Elements (input + output, per chunk) above which a chunk is split further,
# to bound worker memory and let chunks of other callers interleave.
CHUNK_ELEMENTS = 4_000_000
# Below this many points a chunk costs more in overhead than it saves.
MIN_CHUNK_POINTS = 512

# Rough output size per point, in multiples of the input size n (or n*n).
_OP_WEIGHT = {"value": 0, "grad": 1, "vjp": 1, "jvp": 1, "hvp": 2, "jacobian": 2, "hessian": -1}


def elements_per_point(input_elements: int, ops: tuple[str, ...]) -> int:
    """Input plus an estimate of output elements per point."""
    total = input_elements + 1
    for op in ops:
        weight = _OP_WEIGHT.get(op, 1)
        total += input_elements * input_elements if weight < 0 else weight * input_elements
    return max(1, total)


def plan_chunks(points: int, per_point: int, workers: int) -> list[tuple[int, int]]:
    """Half-open [start, stop) ranges covering ``points`` in order.

    >>> plan_chunks(10, 4, 2)
    [(0, 10)]
    >>> plan_chunks(1_000_000, 11, 2)[:2]
    [(0, 250000), (250000, 500000)]
    """
    if points <= 0:
        return []
    by_memory = max(1, CHUNK_ELEMENTS // max(1, per_point))
    # two chunks per worker lets a fast worker pick up a slow one's share
    by_balance = math.ceil(points / (2 * max(1, workers)))
    size = max(min(by_memory, by_balance), min(MIN_CHUNK_POINTS, by_memory))
    size = min(size, points)
    count = math.ceil(points / size)
    size = math.ceil(points / count)
    return [(start, min(start + size, points)) for start in range(0, points, size)]
