"""The fast lane (server/gradserve_server/fastlane.py): which calls take it, what
happens when they overrun, are cancelled or hit a deadline, and that the server's
event loop keeps answering while it computes.

One extra real server (joined to the session's Ray cluster) with a tiny element
threshold and a long lane budget serves this module: ``dot(x, x)``'s grad at 10
inputs is estimated at exactly 21 elements (10 in, 1 value, 10 out), at 11 inputs
at 23; a check at 4 inputs at 21 (4 in, 1 value, two Jacobians' 2 x 4 each), at 5
at 26. The overrun and worker-loss tests, which need a short lane budget and a
server whose Ray processes are its own, are in test_lanes_embedded.py.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.cluster import RayNode, ServerProcess, start_server

import gradserve
from gradserve_server import fastlane
from gradserve_workers.actor import OVERRUN
from gradserve_workers.tasks import ChunkError, ChunkResult

THRESHOLD = 21  # elements of dot(x, x)'s grad at 10 inputs, and of a check at 4
SCALAR = "sum(sin(x) * x)"
WRONG_GRAD = "cos(x) * x"  # the true gradient is cos(x) * x + sin(x)
LANE_SECONDS = 3.0
# ~3 ms of matmul per iteration on a small input: far longer than any deadline here
RUNAWAY = """
def f(x):
    a = ones((300, 300)) / 300
    for i in range(10000):
        a = sin(a @ a + 0.5)
    return sum(a) * dot(x, x)
"""


@pytest.fixture(scope="module")
def lane_server(ray_head: RayNode) -> Iterator[ServerProcess]:
    flags = ["--fast-lane-elements", str(THRESHOLD), "--fast-lane-seconds", str(LANE_SECONDS)]
    proc = start_server(ray_head, extra=flags)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def lane_client(lane_server: ServerProcess) -> Iterator[gradserve.Client]:
    with gradserve.Client(lane_server.address, timeout=60) as c:
        yield c


def _grad_lane(client: gradserve.Client, n: int) -> str:
    x = np.linspace(-1.0, 1.0, n)
    result = client.compute("dot(x, x)", x, ["grad"])
    np.testing.assert_allclose(result["grad"], 2 * x, rtol=1e-12)
    return str(result.metadata.lane)


def test_a_call_at_the_threshold_runs_fast_one_element_over_on_ray(
    lane_client: gradserve.Client, lane_server: ServerProcess
) -> None:
    assert "fast lane on" in lane_server.output
    assert _grad_lane(lane_client, 10) == "fast"
    assert _grad_lane(lane_client, 11) == "ray"
    assert _grad_lane(lane_client, 10) == "fast"  # and back: chosen per request
    # and each call's log line says so
    deadline = time.monotonic() + 10
    while not ("lane=fast" in lane_server.output and "lane=ray" in lane_server.output):
        assert time.monotonic() < deadline, lane_server.output[-2000:]
        time.sleep(0.05)


def test_a_deadline_stops_the_lane_call_while_health_answers(
    lane_client: gradserve.Client, lane_server: ServerProcess
) -> None:
    """A slow small program holds the lane's thread; the event loop keeps serving
    (health checks answer well within a second), the client's deadline stops the
    call, and the lane is free for the next call at once."""
    x = np.linspace(-1.0, 1.0, 10)
    caught: list[BaseException] = []

    def slow() -> None:
        try:
            lane_client.value(RUNAWAY, x, timeout=2.0)
        except BaseException as error:
            caught.append(error)

    runner = threading.Thread(target=slow)
    t0 = time.monotonic()
    runner.start()
    rtts: list[float] = []
    with grpc.insecure_channel(lane_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        time.sleep(0.3)  # the call is computing in the lane by now
        while time.monotonic() - t0 < 1.7:
            s = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            rtts.append(time.perf_counter() - s)
            time.sleep(0.02)
    runner.join(timeout=30)
    assert len(caught) == 1 and isinstance(caught[0], gradserve.DeadlineExceededError), caught
    assert len(rtts) >= 10 and max(rtts) < 1.0, rtts
    # the cancelled call stopped at its next operation: the lane takes the next call
    start = time.monotonic()
    assert _grad_lane(lane_client, 10) == "fast"
    assert time.monotonic() - start < 1.0


def _check_lanes(client: gradserve.Client, source: str, x: np.ndarray, **claim: str) -> list[Any]:
    return [client.check(source, {"x": x}, **claim) for _ in range(2)]


def test_a_check_at_the_threshold_runs_fast_once_measured_one_input_over_on_ray(
    lane_client: gradserve.Client,
) -> None:
    """Checks take the lane by the computes' rule, once a run of them was measured
    (the first is on Ray); the lane's report is the worker's, field for field."""
    x4, x5 = np.linspace(-1.5, 2.0, 4), np.linspace(-1.5, 2.0, 5)
    for claim in ({}, {"grad": WRONG_GRAD}):
        on_ray, here = _check_lanes(lane_client, SCALAR, x4, **claim)
        assert [on_ray.metadata.lane, here.metadata.lane] == ["ray", "fast"]
        assert here.passed is on_ray.passed is not claim
        assert here.worst is not None and on_ray.worst is not None
        assert (here.worst, here.point_passed, here.message) == (
            on_ray.worst,
            on_ray.point_passed,
            on_ray.message,
        )
        assert (here.max_abs_error, here.max_rel_error) == (
            on_ray.max_abs_error,
            on_ray.max_rel_error,
        )
        over = _check_lanes(lane_client, SCALAR, x5, **claim)
        assert [r.metadata.lane for r in over] == ["ray", "ray"]
    # the wrong claim's worst by error / allowance: sin(2) left out, where the true
    # gradient is 0.08
    assert here.worst.input_index == (3,)


# ~0.65 s a check: measured on Ray well under the lane's 3 s, far over a 0.2 s deadline
SLOW_CHECK = RUNAWAY.replace("range(10000)", "range(100)")


def test_a_deadline_stops_a_check_in_the_lane(lane_client: gradserve.Client) -> None:
    x = np.linspace(-1.0, 1.0, 4)  # 21 elements: the lane's
    assert [r.metadata.lane for r in _check_lanes(lane_client, SLOW_CHECK, x)] == ["ray", "fast"]
    assert lane_client.check(SCALAR, {"x": x}).metadata.lane in ("ray", "fast")  # measured
    start = time.monotonic()
    with pytest.raises(gradserve.DeadlineExceededError):
        lane_client.check(SLOW_CHECK, {"x": x}, timeout=0.2)
    assert time.monotonic() - start < 5.0
    # stopped at its next operation: the lane takes the next check at once
    start = time.monotonic()
    assert lane_client.check(SCALAR, {"x": x}).metadata.lane == "fast"
    assert time.monotonic() - start < 1.0


# ---------------------------------------------------------------- the lane in-process


def test_lane_off_at_zero_and_where_torch_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gradserve.fastlane"):
        assert asyncio.run(fastlane.FastLane.start(0, 0.05)) is None
        assert "fast lane off (--fast-lane-elements 0)" in caplog.text
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
        assert asyncio.run(fastlane.FastLane.start(100, 0.05)) is None
    assert "fast lane off: the server cannot compute here" in caplog.text
    assert "torch" in caplog.text


def test_a_caller_gone_before_its_turn_never_runs() -> None:
    """Cancelled while waiting for the thread: its watch is cancelled as it starts."""

    class Watch:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    call, watch = fastlane._Call(), Watch()
    call.cancel()
    call.started(watch)
    assert watch.cancelled
    call, watch = fastlane._Call(), Watch()
    call.started(watch)
    assert not watch.cancelled
    call.cancel()
    assert watch.cancelled


# ---------------------------------------------------------------- routing, with a stand-in
# for the in-process GradActor (the lane's own logic; the real one runs above)


class _Actor:
    """Answers work_here like the lane's GradActor: ``outcome`` says how."""

    def __init__(self, outcome: str, seconds: float = 0.0) -> None:
        self.outcome = outcome
        self.seconds = seconds
        self.calls = 0

    def work_here(self, spec: Any, arrays: Any, stop: int, call: Any) -> ChunkResult:
        self.calls += 1
        time.sleep(self.seconds)  # not cooperative: the "stuck" case ignores its cancel
        if self.outcome == "overrun":
            return ChunkResult(error=ChunkError(OVERRUN, "ran past the express budget"))
        if self.outcome == "invalid":
            return ChunkResult(error=ChunkError("invalid", "log of a negative number"))
        return ChunkResult(outputs={"grad": {"": np.zeros(10)}}, seconds=self.seconds)


def _request(n: int = 10) -> tuple[Any, Any]:
    from gradserve._core import compute_request
    from gradserve_server.budgets import Budgets
    from gradserve_server.chunks import compute_spec
    from gradserve_server.codec import RequestCodec
    from gradserve_server.config import ServerConfig

    config = ServerConfig()
    msg = compute_request("dot(x, x)", {"x": np.ones(n)}, ["grad"]).unary()
    req = RequestCodec(config, Budgets.from_config(config)).compute(msg)
    return req, compute_spec(req, config.limits)


async def _ray_lane() -> list[ChunkResult]:
    return [ChunkResult(outputs={"grad": {"": np.ones(10)}}, seconds=0.001)]


def _lane(actor: _Actor, seconds: float = 0.05) -> fastlane.FastLane:
    return fastlane.FastLane(actor, THRESHOLD, seconds, fastlane._Thread())


def test_an_overrun_runs_again_on_ray_and_stays_there_while_ray_measures_it_slow() -> None:
    req, spec = _request()
    actor = _Actor("overrun")
    lane = _lane(actor)
    ray_seconds = 1.0  # what the Ray lane's run takes: over the lane's 0.05 s

    async def ray_lane() -> list[ChunkResult]:
        return [ChunkResult(outputs={"grad": {"": np.ones(10)}}, seconds=ray_seconds)]

    async def twice() -> list[str]:
        return [(await lane.run(req, spec, ray_lane))[1] for _ in range(2)]

    assert asyncio.run(twice()) == ["ray", "ray"]
    assert actor.calls == 1 and lane.moved == 1  # the second went to Ray directly
    # one that overran only because the machine was busy: Ray ran it quickly, so its
    # next call tries the lane again
    ray_seconds = 0.001
    actor.outcome = "ok"
    assert asyncio.run(twice()) == ["ray", "fast"]
    assert actor.calls == 2
    lane.close()


def test_a_user_error_in_the_lane_is_the_callers_not_a_move_to_ray() -> None:
    from gradserve_server import errors

    req, spec = _request()
    lane = _lane(_Actor("invalid"))
    with pytest.raises(errors.ServiceError) as caught:
        asyncio.run(lane.run(req, spec, _ray_lane))
    assert errors.to_status(caught.value).code is grpc.StatusCode.INVALID_ARGUMENT
    assert "log of a negative number" in str(caught.value.message)
    assert lane.moved == 0
    lane.close()


def test_a_call_that_does_not_stop_is_given_up_on_and_closes_the_lane_until_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    req, spec = _request()
    stuck = 0.05 + fastlane.GRACE_S + 0.5
    actor = _Actor("ok", stuck)
    lane = _lane(actor)

    async def scenario() -> list[str]:
        lanes = [(await lane.run(req, spec, _ray_lane))[1]]  # given up on: Ray
        other, _ = _request(9)  # another function's shapes: the lane is still held
        lanes.append((await lane.run(other, spec, _ray_lane))[1])
        await asyncio.sleep(stuck)  # the stuck call ends; the lane opens again
        actor.seconds = 0.0
        lanes.append((await lane.run(other, spec, _ray_lane))[1])
        return lanes

    with caplog.at_level(logging.WARNING, logger="gradserve.fastlane"):
        assert asyncio.run(scenario()) == ["ray", "ray", "fast"]
    assert "did not stop" in caplog.text
    assert actor.calls == 2 and lane.busy == 0
    lane.close()


def test_just_over_the_threshold_by_shapes_never_enters_the_lane() -> None:
    req, spec = _request(11)  # 23 elements: over 21
    actor = _Actor("ok")
    lane = _lane(actor)
    assert asyncio.run(lane.run(req, spec, _ray_lane))[1] == "ray"
    assert actor.calls == 0
    lane.close()


def _check_request(n: int, **claims: str) -> tuple[Any, Any]:
    from gradserve._core import check_request
    from gradserve_server.budgets import Budgets
    from gradserve_server.chunks import check_spec
    from gradserve_server.codec import RequestCodec
    from gradserve_server.config import ServerConfig

    config = ServerConfig()
    msg = check_request(SCALAR, {"x": np.ones(n)}, **claims)  # type: ignore[arg-type]
    req = RequestCodec(config, Budgets.from_config(config)).check(msg)
    return req, check_spec(req, config.limits)


def test_checks_at_and_just_over_the_threshold_by_shapes() -> None:
    actor = _Actor("ok")
    lane = _lane(actor)
    for claims in ({}, {"grad": WRONG_GRAD}):
        at, at_spec = _check_request(4, **claims)
        over, over_spec = _check_request(5, **claims)
        # at the threshold: on Ray until a run of it was measured, then here
        assert asyncio.run(lane.run(at, at_spec, _ray_lane))[1] == "ray"
        assert asyncio.run(lane.run(at, at_spec, _ray_lane))[1] == "fast"
        assert asyncio.run(lane.run(over, over_spec, _ray_lane))[1] == "ray"
        assert asyncio.run(lane.run(over, over_spec, _ray_lane))[1] == "ray"
    assert actor.calls == 2
    lane.close()


def test_a_check_that_overruns_runs_again_on_ray_and_stays_there_while_slow() -> None:
    req, spec = _check_request(4)
    actor = _Actor("overrun")
    lane = _lane(actor)
    ray_seconds = 0.001

    async def on_ray() -> list[ChunkResult]:
        return [ChunkResult(seconds=ray_seconds)]

    async def lanes(calls: int) -> list[str]:
        return [(await lane.run(req, spec, on_ray))[1] for _ in range(calls)]

    assert asyncio.run(lanes(1)) == ["ray"]  # measured: fast
    ray_seconds = 1.0  # over the lane's 0.05 s: the overrun was no accident
    assert asyncio.run(lanes(2)) == ["ray", "ray"]
    assert actor.calls == 1 and lane.moved == 1  # the second went to Ray directly
    # the same function's claimed-gradient check is another key: measured, it tries the lane
    claimed, claimed_spec = _check_request(4, grad=WRONG_GRAD)
    actor.outcome = "ok"
    runs = [asyncio.run(lane.run(claimed, claimed_spec, _ray_lane))[1] for _ in range(2)]
    assert runs == ["ray", "fast"]
    lane.close()


def test_a_check_that_overran_here_stays_on_ray_even_when_ray_runs_it_fast() -> None:
    """Unlike a compute, whose cost its shapes bound, a check that overran in the lane
    does not flip back to it because Ray ran it quickly."""
    req, spec = _check_request(4)
    actor = _Actor("overrun")
    lane = _lane(actor)

    async def lanes(calls: int) -> list[str]:
        return [(await lane.run(req, spec, _ray_lane))[1] for _ in range(calls)]

    assert asyncio.run(lanes(2)) == ["ray", "ray"]  # measured fast on Ray, overran here
    actor.outcome = "ok"
    assert asyncio.run(lanes(3)) == ["ray", "ray", "ray"]
    assert actor.calls == 1 and lane.moved == 1
    lane.close()


def test_a_check_answered_by_the_lane_is_counted_and_says_so() -> None:
    from gradserve_server import metrics
    from gradserve_server.auth import NOBODY  # the caller outside a request's context

    req, spec = _check_request(4)
    lane = _lane(_Actor("ok"))
    counter = metrics.FAST_LANE_CALLS.labels(metrics.tenant_label(NOBODY.tenant))
    before = counter._value.get()

    async def twice() -> list[str]:
        return [(await fastlane.route(lane, req, spec, _ray_lane))[1] for _ in range(2)]

    assert asyncio.run(twice()) == ["ray", "fast"]
    assert counter._value.get() == before + 1  # the lane's answer, not Ray's
    lane.close()


@pytest.mark.parametrize(("grown", "trimmed"), [(fastlane.TRIM_AFTER_BYTES + 1, 1), (1 << 20, 0)])
def test_a_lane_check_that_grew_the_server_gives_its_heap_back(
    monkeypatch: pytest.MonkeyPatch, grown: int, trimmed: int
) -> None:
    """The server's memory back where it was: a lane check that grew it (its
    Jacobians) trims the heap after it; a small one does not pay for that."""
    _, spec = _check_request(4)
    readings = iter([100 << 20, (100 << 20) + grown])
    trims: list[int] = []
    monkeypatch.setattr(fastlane.memory, "resident_bytes", lambda: next(readings))
    monkeypatch.setattr(fastlane.memory, "trim_now", lambda: trims.append(1))
    actor = fastlane._LocalActor("cpu", 1, 1.0)
    monkeypatch.setattr(actor, "run_here", lambda work, watch: ChunkResult(seconds=0.01))
    assert actor.work_here(spec, {}, 1, fastlane._Call()).seconds == 0.01
    assert len(trims) == trimmed
