"""How a batch is cut into chunks: enough to keep every worker busy, few enough to
keep per-chunk overhead (a Ray hop, about a millisecond) negligible."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

from gradserve_server.requests import CheckRequest, ComputeRequest, Inputs
from gradserve_workers.tasks import FULL_CHECK_MAX_INPUTS, CheckSpec

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


def request_elements(req: ComputeRequest | CheckRequest) -> int:
    """The planner's size estimate of one point of a computation or check."""
    if isinstance(req, ComputeRequest):
        return elements_per_point(req.inputs.per_point_elements, req.ops)
    # a check evaluates ~2n perturbed points and an n x m Jacobian per point
    ops = ("hessian", "hessian") if req.options.order == 2 else ("jacobian", "jacobian")
    return elements_per_point(req.inputs.per_point_elements, ops)


def plan_chunks(
    points: int, per_point: int, workers: int, per_worker: int = 2
) -> list[tuple[int, int]]:
    """Half-open [start, stop) ranges covering ``points`` in order, ``per_worker``
    chunks a worker where memory allows.

    Two chunks a worker let a fast worker pick up a slow one's share, and let the
    first chunks start while later ones still arrive (pipeline.py); inputs already in
    shared memory arrive at once, and there one chunk a worker saves each worker a
    round trip to the server between its chunks (3-5 ms, measured).

    >>> plan_chunks(10, 4, 2)
    [(0, 10)]
    >>> plan_chunks(1_000_000, 11, 2)[:2]
    [(0, 250000), (250000, 500000)]
    >>> plan_chunks(200_000, 21, 2, per_worker=1)
    [(0, 100000), (100000, 200000)]
    """
    if points <= 0:
        return []
    by_memory = max(1, CHUNK_ELEMENTS // max(1, per_point))
    by_balance = math.ceil(points / (per_worker * max(1, workers)))
    size = max(min(by_memory, by_balance), min(MIN_CHUNK_POINTS, by_memory))
    size = min(size, points)
    count = math.ceil(points / size)
    size = math.ceil(points / count)
    return [(start, min(start + size, points)) for start in range(0, points, size)]


# A shard of a check split by input elements holds at least this many of them,
# and a check whose last run took less than this on the workers is not split: a
# shard repeats the check's fixed costs (a worker call, the function's setup), about
# a millisecond or two, which a cheap check (a scalar function's, a few ms) would lose.
SHARD_MIN_INPUTS = 256
SHARD_MIN_SECONDS = 0.010


def plan_shards(inputs: int, workers: int) -> list[tuple[int, int]]:
    """Half-open ranges of a check's input elements, one per worker that will share
    it, at least :data:`SHARD_MIN_INPUTS` each; one range when it is not worth it.

    >>> plan_shards(1000, 2)
    [(0, 500), (500, 1000)]
    >>> plan_shards(1000, 8)
    [(0, 333), (333, 667), (667, 1000)]
    >>> plan_shards(300, 4)
    [(0, 300)]
    """
    count = max(1, min(workers, inputs // SHARD_MIN_INPUTS))
    cuts = [round(i * inputs / count) for i in range(count + 1)]
    return list(itertools.pairwise(cuts))


class WorkLog:
    """How long the last run of each recent kind of request took on the workers: a
    bounded memory that lets the planner split only work that is worth splitting.

    >>> log = WorkLog(capacity=2)
    >>> log.record("a", 0.5); log.record("b", 0.1); log.record("c", 0.2)
    >>> log.seconds("a") is None, log.seconds("c")
    (True, 0.2)
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._seconds: OrderedDict[Hashable, float] = OrderedDict()
        self._capacity = capacity

    def record(self, key: Hashable, seconds: float) -> None:
        self._seconds[key] = seconds
        self._seconds.move_to_end(key)
        while len(self._seconds) > self._capacity:
            self._seconds.popitem(last=False)

    def seconds(self, key: Hashable) -> float | None:
        return self._seconds.get(key)


def check_shards(
    inputs: Inputs, spec: CheckSpec, log: WorkLog, idle: int
) -> tuple[list[tuple[int, int]], tuple[Any, ...] | None]:
    """How one large element-wise check at one point (finite differences, or a
    claimed Jacobian) is split by input elements across the ``idle`` workers (see
    :func:`plan_shards`; one range or none: not split), and the key under which its
    cost is remembered in ``log`` (``None``: not a kind that is split). ``spec`` is
    the check that runs: the request's, or the reference check beside a numeric claim.

    Each shard differentiates and compares its own elements (and evaluates their
    perturbations, or the whole claim). The first check of a function and shapes is
    split (a one-off large check gains most); the next runs whole, which measures it
    (see :func:`record_check`); after that, one whose whole run took less than
    :data:`SHARD_MIN_SECONDS` of worker time is not split. Nor are busy pools,
    several points (split by point instead), fast mode and second order."""
    if spec.kind not in ("finite_difference", "jacobian") or inputs.points != 1:
        return [], None
    # the elements split: the wrt inputs', or a claimed Jacobian's inputs' (its keys)
    split = spec.wrt if spec.kind == "finite_difference" else tuple(spec.claims)
    lead = 1 if inputs.batched else 0
    count = sum(int(np.prod(inputs.arrays[w].shape[lead:])) for w in split or ())
    full = spec.fast is False or (spec.fast is None and count <= FULL_CHECK_MAX_INPUTS)
    if spec.kind == "finite_difference" and (spec.order != 1 or not full):
        return [], None
    shapes = tuple((k, v.shape) for k, v in sorted(inputs.arrays.items()))
    key = (spec.source_hash, spec.wrt, shapes, spec.dtype, spec.kind, tuple(spec.claims.items()))
    last = log.seconds(key)
    if last is not None and (math.isnan(last) or last < SHARD_MIN_SECONDS):
        return [], key
    return plan_shards(count, idle), key


def record_check(log: WorkLog, key: tuple[Any, ...], seconds: float, split: bool) -> None:
    """Remember a check's worker seconds for :func:`check_shards`: a whole run's
    seconds. A split run's sum overstates the whole check, each shard repeating its
    fixed costs (a scalar function's at 1,000 inputs: ~2 ms whole, shards summing to
    10-60 ms on a loaded machine, which kept it split call after call): it only says
    that the check was split (NaN: run it whole next), or, when lower than the whole
    run's seconds known (a whole run slowed by the machine), bounds them.

    >>> log = WorkLog()
    >>> record_check(log, ("f",), 0.030, split=True); log.seconds(("f",))
    nan
    >>> record_check(log, ("f",), 0.002, split=False); log.seconds(("f",))
    0.002
    >>> record_check(log, ("f",), 0.030, split=True); log.seconds(("f",))
    0.002
    >>> record_check(log, ("f",), 0.015, split=False); log.seconds(("f",))
    0.015
    >>> record_check(log, ("f",), 0.008, split=True); log.seconds(("f",))
    0.008
    """
    last = log.seconds(key)
    if not split:
        log.record(key, seconds)
    elif last is None:
        log.record(key, math.nan)
    elif seconds < last:  # False for NaN: the whole run is still to come
        log.record(key, seconds)
