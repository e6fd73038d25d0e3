"""One real server with low budgets for the hostile suite, so that a case can cross a
budget without the test allocating gigabytes (see tests/support/hostile.py)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from support.cluster import RayNode, ServerProcess, start_server

import gradserve
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

MiB = 1024 * 1024
# low enough that every case crosses them with megabytes, not gigabytes
LOW_BUDGETS = {
    "--max-reply-bytes": 32 * MiB,
    "--max-request-bytes": 32 * MiB,
    "--max-inflight-bytes": 80 * MiB,
    "--max-stream-bytes": 8 * MiB,
    "--stream-stall-seconds": 2,
    # the workers' per-call budgets (test_hostile_worker.py)
    "--max-call-bytes": 300 * MiB,
    "--max-call-seconds": 2,
}


@pytest.fixture(scope="session")
def hostile_server(ray_head: RayNode) -> Iterator[ServerProcess]:
    extra = [str(v) for item in LOW_BUDGETS.items() for v in item]
    proc = start_server(ray_head, extra=extra)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def hostile_client(hostile_server: ServerProcess) -> Iterator[gradserve.Client]:
    with gradserve.Client(hostile_server.address, timeout=60) as c:
        yield c


@pytest.fixture
def stub(hostile_server: ServerProcess) -> Iterator[pb_grpc.GradientServiceStub]:
    options = [("grpc.max_receive_message_length", 64 * MiB)]
    with grpc.insecure_channel(hostile_server.address, options=options) as channel:
        yield pb_grpc.GradientServiceStub(channel)
