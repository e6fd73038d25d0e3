"""How the server runs one large check: split across the idle workers by input
elements, or whole (planner.check_shards, planner.record_check), decided by the
check's measured whole-run seconds, not by a split run's (each shard repeats the
check's fixed costs, so shards sum to more than the whole)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradserve._core import check_request
from gradserve_server.budgets import Budgets
from gradserve_server.chunks import check_spec
from gradserve_server.codec import RequestCodec
from gradserve_server.config import ServerConfig
from gradserve_server.planner import SHARD_MIN_SECONDS, WorkLog, check_shards, record_check


def _check(n: int = 1000) -> tuple[Any, Any]:
    config = ServerConfig()
    req = RequestCodec(config, Budgets.from_config(config)).check(
        check_request("sum(sin(x) * x)", {"x": np.ones(n)})
    )
    return req.inputs, check_spec(req, config.limits)


def _runs(log: WorkLog, seconds: list[float]) -> list[int]:
    """Shards of consecutive checks whose runs take ``seconds`` each (whole or split)."""
    inputs, spec = _check()
    counts = []
    for took in seconds:
        shards, key = check_shards(inputs, spec, log, idle=2)
        assert key is not None
        counts.append(max(1, len(shards)))
        record_check(log, key, took, split=len(shards) > 1)
    return counts


def test_a_cheap_check_is_split_once_then_measured_whole_and_kept_whole() -> None:
    # the split run's shards sum to far more than the whole (a loaded machine): that
    # sum is not what decides
    assert _runs(WorkLog(), [0.060, 0.002, 0.002]) == [2, 1, 1]


def test_a_costly_check_is_split_measured_whole_once_then_split() -> None:
    whole = SHARD_MIN_SECONDS + 0.001  # just over: worth splitting
    # (its shards sum to more than the whole: that changes nothing)
    assert _runs(WorkLog(), [0.015, whole, 0.016, 0.016]) == [2, 1, 2, 2]
    # just under: whole from then on
    assert _runs(WorkLog(), [0.015, SHARD_MIN_SECONDS - 0.001, 0.02]) == [2, 1, 1]


def test_a_busy_pool_runs_it_whole_and_measures_it() -> None:
    inputs, spec = _check()
    log = WorkLog()
    shards, key = check_shards(inputs, spec, log, idle=1)
    assert key is not None and len(shards) == 1  # one idle worker: not split
    record_check(log, key, 0.002, split=False)
    assert check_shards(inputs, spec, log, idle=2)[0] == []  # measured cheap: whole


def test_a_whole_run_slowed_by_the_machine_is_bounded_by_a_cheaper_split_run() -> None:
    # whole 15 ms (a busy moment): split; the shards then sum to 8 ms, so the whole
    # costs less than 10 ms: whole again
    assert _runs(WorkLog(), [0.015, 0.015, 0.008, 0.002]) == [2, 1, 2, 1]
