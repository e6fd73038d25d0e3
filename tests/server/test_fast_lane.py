"""The fast lane (server/gradserve_server/fastlane.py): which calls take it, what
happens when they overrun, are cancelled or hit a deadline, and that the server's
event loop keeps answering while it computes.

One extra real server (joined to the session's Ray cluster) with a tiny element
threshold and a long lane budget serves this module: ``dot(x, x)``'s grad at 10
inputs is estimated at exactly 21 elements (10 in, 1 value, 10 out), at 11 inputs
at 23. The overrun and worker-loss tests, which need a short lane budget and a
server whose Ray processes are its own, are in test_lanes_embedded.py.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.cluster import RayNode, ServerProcess, start_server

import gradserve
from gradserve_server import fastlane

THRESHOLD = 21  # elements of dot(x, x)'s grad at 10 inputs
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
