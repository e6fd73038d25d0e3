"""Runaway functions, deadlines and tokens: the right status, and the server keeps serving.

One extra real server (joined to the session's Ray cluster) with a short chunk
timeout and a token serves this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.cluster import RayNode, ServerProcess, start_server
from support.standins import RUNAWAY

import gradserve

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def strict(ray_head: RayNode) -> Iterator[ServerProcess]:
    proc = start_server(ray_head, extra=["--chunk-timeout", "5", "--auth-token", TOKEN])
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def strict_client(strict: ServerProcess) -> Iterator[gradserve.Client]:
    with gradserve.Client(strict.address, token=TOKEN, timeout=60) as c:
        yield c


def _still_serving(client: gradserve.Client) -> None:
    np.testing.assert_allclose(client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]}), [4.0, 8.0])


def _stopped_cooperatively(server: ServerProcess, before: int) -> bool:
    """Whether a worker was given back after a cancel (logged once its probe answers)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.output.count("stopped cooperatively") > before:
            return True
        time.sleep(0.1)
    return False


# The same runaway from a small input: a 600 x 600 matrix made in the function
RUNAWAY_OUTER = """
def f(x):
    x = outer(x, x) / 60
    for i in range(10000):
        x = sin(x @ x)
    return sum(x)
"""
# A 400 x 400 input (1.3 MB) goes to the worker as a Ray argument; a small one is
# packed into one message, which goes by the worker's direct channel (chunks.py,
# channel.py): a timeout and a cancel must stop the work on both.
RUNAWAYS = pytest.mark.parametrize(
    ("source", "n"), [(RUNAWAY, 400), (RUNAWAY_OUTER, 0)], ids=["ray-argument", "channel"]
)


def _runaway_input(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n)) / (n / 10) if n else rng.normal(size=600)


@RUNAWAYS
def test_runaway_function_is_stopped_and_its_worker_kept(
    strict_client: gradserve.Client, strict: ServerProcess, source: str, n: int
) -> None:
    # the chunk timeout (5 s) comes before the worker's own budget (30 s): the chunk
    # is cancelled, and the worker stops it between two operations instead of dying
    x = _runaway_input(n, 0)
    before = strict.output.count("stopped cooperatively")
    with pytest.raises(gradserve.ResourceExhaustedError, match="chunk-timeout"):
        strict_client.value(source, {"x": x})
    assert _stopped_cooperatively(strict, before)
    assert "replacing worker" not in strict.output
    _still_serving(strict_client)
    assert strict_client.server_info().workers == 2


@RUNAWAYS
def test_client_deadline_cancels_the_work(
    strict_client: gradserve.Client, strict: ServerProcess, source: str, n: int
) -> None:
    x = _runaway_input(n, 1)
    before = strict.output.count("stopped cooperatively")
    with pytest.raises(gradserve.DeadlineExceededError):
        strict_client.value(source, {"x": x}, timeout=0.7)
    _still_serving(strict_client)
    assert _stopped_cooperatively(strict, before)  # the running chunk was stopped
    assert "replacing worker" not in strict.output


def test_missing_or_wrong_token_is_unauthenticated(strict: ServerProcess) -> None:
    for token in (None, "wrong"):
        with gradserve.Client(strict.address, token=token or "") as c:
            with pytest.raises(gradserve.UnauthenticatedError, match="token"):
                c.grad("sum(x)", {"x": [1.0]})
            with pytest.raises(gradserve.UnauthenticatedError):
                c.server_info()
            # the streaming calls are refused the same way (request and response streams)
            with pytest.raises(gradserve.UnauthenticatedError):
                c.grad("sum(x)", {"x": np.ones(200_000)})  # over 1 MiB: ComputeStream
            with pytest.raises(gradserve.UnauthenticatedError):
                c.job("job-0").wait(timeout=10)  # WatchJob


def test_health_needs_no_token(strict: ServerProcess) -> None:
    with grpc.insecure_channel(strict.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="gradserve.v1.GradientService"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service_and_needs_no_token(strict: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(strict.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"gradserve.v1.GradientService", "grpc.health.v1.Health"} <= names


def test_bad_request_carries_a_field_violation(address: str) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from gradserve.v1 import gradserve_pb2 as pb
    from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Compute(pb.ComputeRequest(function="sin(", ops=[pb.OP_VALUE]), timeout=30)
    status = rpc_status.from_call(info.value)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "function"


def test_sigterm_drains_in_flight_calls_then_exits(ray_head: RayNode) -> None:
    """A server of its own: without the module's 5 s chunk timeout, which a loaded
    machine can reach on this call's chunks, and with no earlier test's reclaimed
    worker still being replaced when the signal comes."""
    import signal
    import threading
    import time

    # data-dependent control flow runs point by point: ~1 s of work for a request
    # small enough to go unary, so it is on the server at once
    branchy = "def f(x):\n    if sum(x) > 0:\n        return sum(sin(x))\n    return sum(cos(x))"
    x = np.random.default_rng(2).normal(size=(8_000, 10))
    expected = np.where(x.sum(axis=1, keepdims=True) > 0, np.cos(x), -np.sin(x))
    outcome: dict[str, object] = {}

    def call() -> None:
        with gradserve.Client(server.address, token=TOKEN, timeout=120) as c:
            try:
                outcome["grad"] = c.grad(branchy, {"x": x}, batched=True)
                outcome["done_at"] = time.monotonic()
            except gradserve.GradserveError as exc:  # pragma: no cover - the failure shown
                outcome["error"] = exc

    server = start_server(ray_head, extra=["--auth-token", TOKEN])
    try:
        worker = threading.Thread(target=call)
        worker.start()
        time.sleep(0.5)  # the call is on the server (its work takes ~1-1.6 s quiet)
        signalled_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        worker.join(120)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["done_at"] > signalled_at  # the call was in flight: it was drained
        np.testing.assert_allclose(outcome["grad"], expected, rtol=1e-12, atol=1e-14)
        assert server.proc.wait(60) == 0
        assert "gradserve: stopped" in server.output
    finally:
        server.stop()
