"""Issue 16, item 9: server streams produce pieces only as their readers take them, so
GetJobResults streams that are never read hold at most --max-stream-bytes (8 MiB
here) between them, and a reader that takes nothing for --stream-stall-seconds (2 s
here) loses its stream (as does a ComputeStream sender that sends nothing). A stream
waiting for a running job's next task holds none of that budget, and the SDK resumes
a results stream closed because its reader was slow."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from support.cluster import ServerProcess
from support.hostile import Watch, rss, scaled, stream_call

import gradserve
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

MiB = 1024 * 1024
# a client that takes little off the socket until it reads (gRPC's own client buffers
# several MB ahead of its reader otherwise, which would hide the server's pacing)
SMALL_WINDOW = [
    ("grpc.max_receive_message_length", 64 * MiB),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 64 * 1024),
]


@pytest.fixture(scope="module")
def big_job(hostile_server: ServerProcess) -> Iterator[str]:
    """A finished job with one result of 4 MB (16 MB in the full suite)."""
    points = scaled(500, 2000)
    with gradserve.Client(hostile_server.address, timeout=120) as client:
        job = client.submit(
            {
                "tasks": [
                    {
                        "function": "x * 1.0",
                        "inputs": {"x": {"sample": {"dist": "normal", "shape": [1000],
                                                    "count": points, "seed": 1}}},
                        "ops": ["value"],
                    }
                ]
            }
        )  # fmt: skip
        assert job.wait().state == "succeeded"
        yield job.id


def open_unread(address: str, job_id: str, count: int) -> list[tuple[grpc.Channel, object]]:
    calls = []
    for _ in range(count):
        channel = grpc.insecure_channel(address, options=SMALL_WINDOW)
        stub = pb_grpc.GradientServiceStub(channel)
        calls.append(
            (channel, stub.GetJobResults(pb.GetJobResultsRequest(job_id=job_id), timeout=120))
        )
    return calls


def test_results_streams_nobody_reads_hold_a_bounded_amount(
    hostile_server: ServerProcess, big_job: str
) -> None:
    count = scaled(40, 1000)
    with Watch(hostile_server) as watch:
        calls = open_unread(hostile_server.address, big_job, count)
        time.sleep(2.0)
        held = rss(hostile_server) - watch.rss_before
        for channel, call in calls:
            call.cancel()  # type: ignore[attr-defined]
            channel.close()
    # without pacing each unread stream held ~10 MB of a 16 MB result (1,000: 6.3 GB);
    # now they hold the 8 MiB stream budget between them (1,000: +51 MB measured)
    assert held < 200 * MiB, f"{count} unread streams: server RSS +{held / 1e6:.0f} MB"
    watch.check()
    with gradserve.Client(hostile_server.address, timeout=120) as client:
        (result,) = list(client.job(big_job).results())  # a reader still gets it all
    assert result.outputs["value"].shape == (scaled(500, 2000), 1000)
    assert np.isfinite(result.outputs["value"]).all()


def test_a_reader_that_takes_nothing_loses_its_stream(
    hostile_server: ServerProcess, big_job: str, stub: pb_grpc.GradientServiceStub
) -> None:
    """And a ComputeStream sender that declares 16 MB and then sends nothing loses its
    stream too, with the bytes it had reserved."""
    ((channel, call),) = open_unread(hostile_server.address, big_job, 1)
    header = pb.ComputeRequest(function="sum(x)", ops=[pb.OP_VALUE], batched=True)
    header.inputs["x"].CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[500_000, 4]))
    done = threading.Event()

    def silent() -> Iterator[pb.ComputeRequestPart]:
        yield pb.ComputeRequestPart(header=header)
        done.wait(30)

    sender: list[tuple[grpc.StatusCode, str, float]] = []
    thread = threading.Thread(target=lambda: sender.append(stream_call(stub, silent())))
    thread.start()
    time.sleep(3.2)  # past the 2 s stall limit
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:  # type: ignore[attr-defined]
            pass
    channel.close()
    assert info.value.code() is grpc.StatusCode.ABORTED  # slow, not over a budget
    assert "took nothing for 2 s" in str(info.value.details())
    thread.join(30)
    done.set()
    code, details, seconds = sender[0]
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "sent nothing for 2 s" in details
    assert 1.5 < seconds < 3.2


# one point at a time (about a millisecond each): a job of such tasks runs for a while
SLOW = """def f(x):
    if sum(x) > 0:
        return sum(x * x)
    else:
        return sum(sin(x))
"""


def test_followers_of_a_running_job_hold_no_stream_budget(
    hostile_server: ServerProcess, hostile_client: gradserve.Client
) -> None:
    """16 GetJobResults streams waiting for a running job's last task would hold 16 MiB
    of the 8 MiB stream budget if each reserved its room before its next message
    existed; they hold none, and another caller's ComputeStream reply still streams."""
    sample = {"sample": {"dist": "normal", "shape": [4], "count": 300, "seed": 1}}
    tasks = [
        {"function": SLOW, "inputs": {"x": sample}, "ops": ["grad"]}
    ] * 600  # ~0.1 s each: the job outlives the wait below
    job = hostile_client.submit({"tasks": tasks})
    followers: list[tuple[grpc.Channel, object]] = []
    try:
        for _ in range(16):
            channel = grpc.insecure_channel(hostile_server.address, options=SMALL_WINDOW)
            request = pb.GetJobResultsRequest(job_id=job.id, start_task=len(tasks) - 1)
            stub = pb_grpc.GradientServiceStub(channel)
            followers.append((channel, stub.GetJobResults(request, timeout=120)))
        time.sleep(3.0)  # past the stall limit: a follower holding room would show now
        assert not job.status().done, "the job ended too soon to test its followers"
        x = np.linspace(-1.0, 1.0, 300_000)  # 2.4 MB each way: ComputeStream, 5 pieces back
        with gradserve.Client(hostile_server.address, timeout=60) as other:
            np.testing.assert_array_equal(other.value("x * 2.0", x), 2.0 * x)
        assert job.cancel().state in ("cancelled", "succeeded")
        for _, call in followers:  # each ends with the job: its last task, cancelled or done
            parts = list(call)  # type: ignore[call-overload]
            assert parts and parts[0].header.task_index == len(tasks) - 1
    finally:
        for channel, call in followers:
            call.cancel()  # type: ignore[attr-defined]
            channel.close()


@pytest.fixture(scope="module")
def three_big_tasks(hostile_server: ServerProcess) -> Iterator[str]:
    """A finished job of three tasks whose results (8 MB each) outgrow what the
    transport buffers ahead of a reader."""
    sample = {"sample": {"dist": "normal", "shape": [1000], "count": 1000, "seed": 3}}
    with gradserve.Client(hostile_server.address, timeout=120) as client:
        job = client.submit(
            {"tasks": [{"function": "x * 1.0", "inputs": {"x": sample}, "ops": ["value"]}] * 3}
        )
        assert job.wait().state == "succeeded"
        yield job.id


def aborts(server: ServerProcess) -> int:
    return sum("ABORTED" in line for line in server.lines)


def test_a_slow_reader_of_job_results_gets_every_result(
    hostile_server: ServerProcess, three_big_tasks: str
) -> None:
    """The reader sleeps past the 2 s stall limit after each task: the server closes
    its stream (ABORTED), and job.results() resumes at the next task, sync and async."""
    before = aborts(hostile_server)
    seen: list[int] = []
    with gradserve.Client(hostile_server.address, timeout=120) as client:
        for result in client.job(three_big_tasks).results():
            assert result.error is None and result.outputs["value"].shape == (1000, 1000)
            seen.append(result.task_index)
            if result.task_index < 2:
                time.sleep(2.6)
    assert seen == [0, 1, 2]
    assert aborts(hostile_server) > before, "the reader was never slow enough to be closed"

    async def read_slowly() -> list[int]:
        indices = []
        async with gradserve.AsyncClient(hostile_server.address, timeout=120) as client:
            async for result in client.job(three_big_tasks).results():
                assert result.outputs["value"].shape == (1000, 1000)
                indices.append(result.task_index)
                if result.task_index < 2:
                    await asyncio.sleep(2.6)
        return indices

    middle = aborts(hostile_server)
    assert asyncio.run(read_slowly()) == [0, 1, 2]
    assert aborts(hostile_server) > middle
