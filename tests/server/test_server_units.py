"""Server pieces that need no cluster: chunk planning, config, the torch-free request path."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import types
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from gradserve_server.config import LIMIT_DEFAULTS, parse_config
from gradserve_server.planner import (
    SHARD_MIN_INPUTS,
    WorkLog,
    elements_per_point,
    plan_chunks,
    plan_shards,
)


@pytest.mark.parametrize(
    ("points", "per_point", "workers"),
    [(1, 3, 2), (10, 4, 2), (3_000, 11, 2), (1_000_000, 11, 2), (123_457, 400, 3), (7, 10**7, 2)],
)
def test_chunks_tile_the_points_in_order(points: int, per_point: int, workers: int) -> None:
    ranges = plan_chunks(points, per_point, workers)
    assert ranges[0][0] == 0 and ranges[-1][1] == points
    assert all(a < b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ranges))


@pytest.mark.parametrize("per_worker", [1, 2])
def test_chunks_per_worker(per_worker: int) -> None:
    """One chunk a worker where inputs are in shared memory, two where they arrive
    by the wire; memory bounds the chunks either way."""
    assert len(plan_chunks(200_000, 21, 2, per_worker)) == 2 * per_worker
    assert len(plan_chunks(2_000_000, 21, 2, per_worker)) == 11  # 4M elements a chunk


@pytest.mark.parametrize(
    ("values", "found"),
    [
        (["max", "max", -1.0], None),  # their sum overflows; every one is finite
        ([1.0, float("nan"), 2.0], "NaN at point 1, index ()"),
        (["max", "max", float("-inf")], "Inf at point 2, index ()"),
    ],
)
def test_finite_inputs_finds_the_first_non_finite_point(
    values: list[float], found: str | None
) -> None:
    import numpy as np

    from gradserve_server import rules
    from gradserve_server.errors import ServiceError

    for dtype in (np.float64, np.float32):
        big = float(np.finfo(dtype).max)
        arr = np.array([big if v == "max" else v for v in values], dtype=dtype)
        if found is None:
            rules.finite_inputs({"x": arr}, True, "grad(f, x)")
            continue
        with pytest.raises(ServiceError) as info:
            rules.finite_inputs({"x": arr}, True, "grad(f, x)")
        assert f"input 'x' contains {found}" in str(info.value)


def test_big_batches_use_every_worker_and_bounded_chunks() -> None:
    ranges = plan_chunks(1_000_000, elements_per_point(10, ("grad",)), 2)
    assert len(ranges) >= 4
    assert max(b - a for a, b in ranges) * 21 <= 4_000_000


@pytest.mark.parametrize(
    ("inputs", "workers", "count"),
    [(1, 4, 1), (255, 8, 1), (511, 2, 1), (512, 2, 2), (1000, 2, 2), (1000, 16, 3),
     (2000, 0, 1), (2000, 3, 3), (7919, 64, 30)],
)  # fmt: skip
def test_shards_tile_the_inputs_and_are_never_small(inputs: int, workers: int, count: int) -> None:
    ranges = plan_shards(inputs, workers)
    assert len(ranges) == count
    assert ranges[0][0] == 0 and ranges[-1][1] == inputs
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    if count > 1:
        assert min(b - a for a, b in ranges) >= SHARD_MIN_INPUTS


def test_work_log_remembers_the_latest_run_of_recent_keys() -> None:
    log = WorkLog(capacity=3)
    for i, key in enumerate("abcd"):
        log.record(key, float(i))
    assert log.seconds("a") is None  # the oldest went
    log.record("b", 9.0)  # updated and now the newest
    log.record("e", 1.0)
    assert log.seconds("b") == 9.0 and log.seconds("c") is None
    assert [log.seconds(k) for k in "bde"] == [9.0, 3.0, 1.0]


def test_hessian_weighs_more_than_grad() -> None:
    assert elements_per_point(10, ("hessian",)) > elements_per_point(10, ("grad",))


def test_config_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADSERVE_PORT", "6000")
    monkeypatch.setenv("GRADSERVE_MAX_LOOP_ITERATIONS", "77")
    config = parse_config(["--num-workers", "3"])
    assert config.port == 6000 and config.num_workers == 3
    assert config.limits["max_loop_iterations"] == 77
    assert set(config.limits) == set(LIMIT_DEFAULTS)
    assert parse_config(["--port", "7000"]).port == 7000  # a flag beats the variable


def test_request_path_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import gradserve_server.main, gradserve_server.servicer, gradserve_server.service\n"
        "from gradserve_server import rules\n"
        "rules.program('sum(sin(x))', dict(" + repr(LIMIT_DEFAULTS) + "))\n"
        "assert 'torch' not in sys.modules, 'torch imported on the request path'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_ray_token_file_is_adopted_for_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradserve_server.main import _adopt_ray_token

    token = tmp_path / "ray_token"
    token.write_text("abc123\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("GRADSERVE_RAY_TOKEN_FILE", str(token))
    _adopt_ray_token()
    assert os.environ["RAY_AUTH_TOKEN"] == "abc123"
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given")  # an explicit token wins over the file
    _adopt_ray_token()
    assert os.environ["RAY_AUTH_TOKEN"] == "given"


class _Handle:
    """Stands in for a Ray actor handle: records which method a chunk calls, how."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, method: str) -> object:
        def remote(*args: object) -> str:
            self.calls.append((method, args))
            return "ref"

        return types.SimpleNamespace(remote=remote)


def test_small_chunks_travel_packed_and_large_ones_as_arguments() -> None:
    import numpy as np

    from gradserve_server.chunks import chunk_submitter
    from gradserve_workers.tasks import PACKED_CALL_MAX_BYTES, ComputeSpec, unpack_call

    spec = ComputeSpec(source="sum(x)", source_hash="h", ops=("vjp",), wrt=None,
                       batched=True, dtype="float64")  # fmt: skip
    points = np.arange(24.0).reshape(8, 3)
    cot = np.arange(8.0)
    handle = _Handle()
    payload = {"x": points, "cotangent:": cot}
    assert chunk_submitter(spec, "compute", payload, 2, 5)(handle) == "ref"
    ((method, args),) = handle.calls
    assert method == "run"  # one message, with only this chunk's points, extras too
    call = unpack_call(args[0])  # type: ignore[arg-type]
    assert call.spec == spec and (call.start, call.stop) == (0, 3)
    np.testing.assert_array_equal(call.arrays["x"], points[2:5])
    np.testing.assert_array_equal(call.arrays["cotangent:"], cot[2:5])

    # one point's arrays at the limit: packed; one element (8 bytes) over: Ray arguments
    single = ComputeSpec(source="sum(x)", source_hash="h", ops=("grad",), wrt=None,
                         batched=False, dtype="float64")  # fmt: skip
    at_limit = np.random.default_rng(0).normal(size=PACKED_CALL_MAX_BYTES // 8)
    handle = _Handle()
    chunk_submitter(single, "compute", {"x": at_limit}, 0, 1)(handle)
    ((method, args),) = handle.calls
    call = unpack_call(args[0])  # type: ignore[arg-type]
    assert method == "run" and (call.start, call.stop) == (0, 1)
    np.testing.assert_array_equal(call.arrays["x"], at_limit)
    big = np.zeros(PACKED_CALL_MAX_BYTES // 8 + 1)
    handle = _Handle()
    chunk_submitter(single, "compute", {"x": big}, 0, 1)(handle)
    ((method, args),) = handle.calls
    assert method == "compute" and args[0] == single and args[2:] == (0, 1)
    assert args[1]["x"] is big  # type: ignore[index]

    # a batched chunk over the limit: Ray arguments, still only its own points
    many = np.zeros((4, PACKED_CALL_MAX_BYTES // 8))
    handle = _Handle()
    chunk_submitter(spec, "check", {"x": many}, 1, 3)(handle)
    ((method, args),) = handle.calls
    assert method == "check" and args[2:] == (0, 2)
    assert args[1]["x"].shape == (2, many.shape[1])  # type: ignore[index]

    # an object-store ref (several chunks of large arrays): the typed call, with the range
    handle = _Handle()
    chunk_submitter(spec, "check", "an-object-ref", 4, 8)(handle)
    assert handle.calls == [("check", (spec, "an-object-ref", 4, 8))]


def test_packed_calls_are_the_ones_a_direct_channel_carries() -> None:
    """dispatch sends a ``Packed`` call by the worker's direct channel when it has one:
    small calls, and calls by shared memory whatever the size of what they name."""
    import numpy as np

    from gradserve_server.chunks import chunk_submitter
    from gradserve_server.dispatch import Packed
    from gradserve_workers.shm import Placed, SharedArrays
    from gradserve_workers.tasks import PACKED_CALL_MAX_BYTES, ComputeSpec, unpack_call

    single = ComputeSpec(source="sum(x)", source_hash="h", ops=("grad",), wrt=None,
                         batched=False, dtype="float64")  # fmt: skip
    at_limit = np.zeros(PACKED_CALL_MAX_BYTES // 8)
    over = np.zeros(PACKED_CALL_MAX_BYTES // 8 + 1)
    assert isinstance(chunk_submitter(single, "compute", {"x": at_limit}, 0, 1), Packed)
    assert not isinstance(chunk_submitter(single, "compute", {"x": over}, 0, 1), Packed)

    batched = ComputeSpec(source="sum(x)", source_hash="h", ops=("grad",), wrt=None,
                          batched=True, dtype="float64")  # fmt: skip
    huge = Placed("gradserve-seg", 0, (200_000, 10), "float64")  # 16 MB in a segment
    shared = SharedArrays({"x": huge}, {}, "this-host")
    packed = chunk_submitter(batched, "compute", shared, 100_000, 200_000)
    assert isinstance(packed, Packed) and len(packed.message) < 4096
    call = unpack_call(packed.message)
    assert isinstance(call.arrays, SharedArrays) and call.arrays.placed == {"x": huge}
    assert (call.start, call.stop) == (100_000, 200_000)  # the rows of the whole batch


def test_a_lone_chunk_is_awaited_in_place_and_several_in_tasks() -> None:
    from gradserve_server.dispatch import gather_or_cancel

    async def current() -> object:
        await asyncio.sleep(0)
        return asyncio.current_task()

    async def boom() -> None:
        raise ValueError("boom")

    async def main() -> None:
        me = asyncio.current_task()
        assert await gather_or_cancel([current()]) == [me]  # no task of its own
        with pytest.raises(ValueError, match="boom"):
            await gather_or_cancel([boom()])
        tasks = await gather_or_cancel([current(), current()])
        assert len(set(tasks)) == 2 and me not in tasks  # in parallel, in order
        with pytest.raises(ValueError, match="boom"):
            await gather_or_cancel([current(), boom()])

    asyncio.run(main())


class _Pool:
    def __init__(self) -> None:
        self.retired: list[str] = []
        self.reclaimed: list[str] = []

    def retire(self, worker: object, reason: str) -> None:
        self.retired.append(reason)

    def reclaim(self, worker: object, ref: object, reason: str) -> None:
        self.reclaimed.append(reason)


class _Ref:
    """Like a Ray ObjectRef: each await waits on a future of its own."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.waits: list[asyncio.Future[str]] = []

    def __await__(self) -> Generator[Any, None, str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.value is not None:
            fut.set_result(self.value)
        self.waits.append(fut)
        return fut.__await__()


def test_a_result_ready_as_the_timeout_fires_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeout and the result can land in one turn of the event loop: the worker
    finished, so its result stands and it is not stopped; a chunk that did run past
    the timeout is cancelled (pool.reclaim), not its worker killed outright."""
    from gradserve_server import dispatch, errors

    async def main() -> None:
        pool = _Pool()
        worker = types.SimpleNamespace(handle=None, open_channel=None)
        late = _Ref()

        def done_at_timeout(ref: _Ref) -> bool:
            ref.value = "result"  # it finished just as the timeout fired
            return True

        monkeypatch.setattr(dispatch, "_done", done_at_timeout)
        got = await dispatch._on_worker(pool, worker, lambda h: late, 0.01)  # type: ignore[arg-type]
        assert got == "result" and pool.retired == [] and pool.reclaimed == []
        assert late.waits[0].cancelled()  # the first wait was the one the timeout ended

        monkeypatch.setattr(dispatch, "_done", lambda ref: False)
        with pytest.raises(errors.ServiceError, match=r"more than 0\.01 s"):
            await dispatch._on_worker(pool, worker, lambda h: _Ref(), 0.01)  # type: ignore[arg-type]
        assert pool.reclaimed == ["chunk ran past 0.01 s"] and pool.retired == []

    asyncio.run(main())


@pytest.mark.parametrize("cancelled", [True, False])
def test_a_failure_after_the_client_left_is_a_cancel(cancelled: bool) -> None:
    """What fails in a handler once its client cancelled (a stream's write failing
    inside gRPC, a request stream ending short) is reported as the client's cancel,
    not as an internal error or the caller's mistake; otherwise it is aborted with
    its status."""
    from gradserve_server.errors import guard

    class WriteFailed(Exception):
        pass

    class Aborted(Exception):
        pass

    class Context:
        def cancelled(self) -> bool:
            return cancelled

        def trailing_metadata(self) -> tuple[Any, ...]:
            return ()

        def set_trailing_metadata(self, metadata: Any) -> None:
            pass

        async def abort(self, code: Any, message: str) -> None:
            raise Aborted(code)

    class Servicer:
        @guard
        async def Handler(self, request: Any, context: Any) -> None:
            raise WriteFailed("execute_batch")

    expected: type[BaseException] = asyncio.CancelledError if cancelled else Aborted
    with pytest.raises(expected):
        asyncio.run(Servicer().Handler(object(), Context()))
