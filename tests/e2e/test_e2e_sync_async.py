"""Client and AsyncClient behave alike: every scenario here runs through both against
the real server, and the two give the same answers, the same errors and the same
job results, including a results stream the server cuts and the client resumes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest
from support.cluster import RayNode, ServerProcess, start_server

import gradserve

Scenario = Callable[[Any], Awaitable[Any]]


async def call(target: Any, method: str, /, *args: Any, **kwargs: Any) -> Any:
    """``target.name(...)``, awaited when the client is the async one."""
    out = getattr(target, method)(*args, **kwargs)
    return await out if inspect.isawaitable(out) else out


async def collect(results: Any, pause: Callable[[Any], float] = lambda _: 0.0) -> list[Any]:
    """Every item of a sync or async iterator, pausing ``pause(item)`` seconds after
    each one without reading (the way a slow reader does)."""
    out = []
    if hasattr(results, "__aiter__"):
        async for item in results:
            out.append(item)
            await asyncio.sleep(pause(item))
    else:
        for item in results:
            out.append(item)
            time.sleep(pause(item))
    return out


def run_both(address: str, scenario: Scenario, **options: Any) -> tuple[Any, Any]:
    """The scenario's outcome through Client, then through AsyncClient."""

    async def sync_side() -> Any:
        with gradserve.Client(address, timeout=120, **options) as client:
            return await scenario(client)

    async def async_side() -> Any:
        async with gradserve.AsyncClient(address, timeout=120, **options) as client:
            return await scenario(client)

    return asyncio.run(sync_side()), asyncio.run(async_side())


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b


async def operations(c: Any) -> dict[str, Any]:
    x = {"x": [0.5, -1.0, 2.0]}
    return {
        "value": await call(c, "value", "sum(sin(x))", x),
        "grad": await call(c, "grad", "sum(sin(x))", x),
        "jacobian": await call(c, "jacobian", "sin(x) * y", {"x": [1.0, 2.0], "y": 3.0}),
        "hessian": await call(c, "hessian", "sum(x ** 3)", x),
        "vjp": await call(c, "vjp", "x * 2.0", x, [1.0, 1.0, 1.0]),
        "jvp": await call(c, "jvp", "x * 2.0", x, [1.0, 0.0, 0.0]),
        "hvp": await call(c, "hvp", "sum(x ** 3)", x, [1.0, 0.0, 0.0]),
        "compute": (await call(c, "compute", "sum(x * x)", x, ["value", "grad"])).outputs,
        "batched": await call(c, "grad", "sum(x * x)", np.ones((4, 2)), batched=True),
        "float32": await call(c, "grad", "sum(x * x)", np.ones(3, np.float32)),
    }


def test_operations_agree(address: str) -> None:
    sync, async_ = run_both(address, operations)
    assert_same(sync, async_)
    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(sync["grad"], np.cos(x))
    np.testing.assert_allclose(sync["hessian"], np.diag(6 * x))
    np.testing.assert_allclose(sync["jacobian"]["y"], np.sin([1.0, 2.0]))
    np.testing.assert_allclose(sync["hvp"], [3.0, 0.0, 0.0])
    assert sync["float32"].dtype == np.float32


async def streamed(c: Any) -> dict[str, Any]:
    big = np.linspace(-1.0, 1.0, 200_000)  # 1.6 MB: the request goes through ComputeStream
    n = 1500  # an 18 MB Jacobian: over the server's 16 MiB message limit, retried as a stream
    return {
        "request": await call(c, "grad", "sum(x * x)", big),
        "reply": await call(c, "jacobian", "x * 2.0", np.ones(n)),
    }


def test_streamed_requests_and_replies_agree(address: str) -> None:
    sync, async_ = run_both(address, streamed)
    assert_same(sync, async_)
    np.testing.assert_allclose(sync["request"], 2 * np.linspace(-1.0, 1.0, 200_000))
    np.testing.assert_array_equal(sync["reply"], 2 * np.eye(1500))


async def checks(c: Any) -> dict[str, Any]:
    good = await call(c, "check", "sum(sin(x))", {"x": [0.1, 0.2]})
    wrong = await call(c, "check", "sum(x * x)", {"x": [1.0, 2.0]}, grad="3 * x")
    second = await call(c, "check", "sum(x ** 3)", {"x": [1.0, 2.0]}, order=2)
    single = await call(c, "check", "sum(x * x)", {"x": np.ones(2, np.float32)})
    return {"good": good, "wrong": wrong, "second": second, "single": single}


def test_checks_agree(address: str) -> None:
    sync, async_ = run_both(address, checks)
    assert sync == async_  # CheckReport equality leaves out how it ran (metadata)
    assert sync["good"].passed and not sync["wrong"].passed and sync["second"].passed
    assert sync["wrong"].kind == "claimed_grad" and sync["second"].symmetric is True
    assert sync["single"].dtype == "float32" and sync["good"].dtype == "float64"


async def errors(c: Any) -> list[tuple[str, str, Any]]:
    seen = []
    attempts: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("grad", ("sum(x *)", [1.0]), {}),  # a parse error, with its position
        ("grad", ("__import__('os')", [1.0]), {}),  # not allowed by the language
        ("grad", ("sum(x)", [1.0]), {"dtype": "float16"}),  # refused before any call
        ("grad", ("x * 2.0", [1.0, 2.0]), {}),  # a gradient of a non-scalar
        ("check", ("sum(x)",), {}),  # no inputs
    ]
    for name, args, kwargs in attempts:
        with pytest.raises(gradserve.GradserveError) as info:
            await call(c, name, *args, **kwargs)
        where = (info.value.line, info.value.column) if hasattr(info.value, "line") else None
        seen.append((type(info.value).__name__, info.value.message, where))
    with pytest.raises(gradserve.NotFoundError) as missing:
        await call(c.job("job-that-does-not-exist"), "status")
    seen.append((type(missing.value).__name__, missing.value.message, None))
    return seen


def test_errors_agree(address: str) -> None:
    sync, async_ = run_both(address, errors)
    assert sync == async_
    kinds = [kind for kind, _, _ in sync]
    assert kinds[0] == kinds[1] == "InvalidSpecError" and sync[0][2] is not None
    assert kinds[2] == kinds[3] == kinds[4] == "InvalidArgumentError"
    assert kinds[5] == "NotFoundError"


TASKS = [
    {"id": "a", "function": "sum(x * x)", "inputs": {"x": [1.0, 2.0]}, "ops": ["value", "grad"]},
    {"id": "b", "function": "sum(sin(x))", "inputs": {"x": [0.0]}, "check": {}},
    {"id": "c", "function": "sum(x *)", "inputs": {"x": [1.0]}, "ops": ["grad"]},
]


async def jobs(c: Any) -> dict[str, Any]:
    job = await call(c, "submit", {"tasks": TASKS}, name="sync-async")
    final = await call(job, "wait", timeout=120)
    results = await collect(job.results())
    from_second = await collect(job.results(start_task=1))
    listed = await call(c, "jobs", ["succeeded", "failed"])
    status = await call(c.job(job.id), "status")
    deleted = await call(c, "delete_job", job.id)
    with pytest.raises(gradserve.NotFoundError):
        await call(job, "status")
    return {
        "final": (final.name, final.state, final.tasks_done, final.tasks_failed),
        "status": (status.state, status.tasks_total),
        "listed": job.id in {j.id for j in listed},
        "deleted": deleted.state,
        "results": [(r.task_id, r.outputs, r.check, r.error_code) for r in results],
        "from_second": [r.task_index for r in from_second],
    }


def test_jobs_agree(address: str) -> None:
    sync, async_ = run_both(address, jobs)
    assert_same(sync["results"][0][1], async_["results"][0][1])
    sync["results"][0] = async_["results"][0] = None  # arrays compared above
    assert sync == async_
    assert sync["final"][0] == "sync-async" and sync["listed"]
    assert sync["from_second"] == [1, 2]
    assert sync["results"][1][2].passed and sync["results"][2][3] == "INVALID_ARGUMENT"
    assert sync["results"][1][2].dtype == "float64"


# ------------------------------------------------------------- a cut results stream

STALL_SECONDS = 1


@pytest.fixture(scope="module")
def stalling_server(ray_head: RayNode) -> Iterator[ServerProcess]:
    """A server that closes a results stream whose reader takes nothing for 1 s."""
    proc = start_server(
        ray_head, num_workers=1, extra=["--stream-stall-seconds", str(STALL_SECONDS)]
    )
    try:
        yield proc
    finally:
        proc.stop()


def aborted_streams(server: ServerProcess) -> int:
    return sum("ABORTED" in line for line in server.lines)


async def slow_reader(c: Any) -> list[int]:
    # three results of 8 MB each: more than the transport takes ahead of a reader
    sample = {"sample": {"dist": "normal", "shape": [1000], "count": 1000, "seed": 3}}
    task = {"function": "x * 1.0", "inputs": {"x": sample}, "ops": ["value"]}
    job = await call(c, "submit", {"tasks": [task] * 3})
    assert (await call(job, "wait", timeout=120)).state == "succeeded"
    # the reader stops reading for longer than the server waits after each of the
    # first two tasks: the server closes the stream, the client resumes at the next task
    results = await collect(job.results(), lambda r: 1.8 if r.task_index < 2 else 0.0)
    for r in results:
        assert r.error is None and r.outputs["value"].shape == (1000, 1000)
    return [r.task_index for r in results]


def test_a_cut_results_stream_resumes_in_both(stalling_server: ServerProcess) -> None:
    before = aborted_streams(stalling_server)

    def cut_while(run: Callable[[], list[int]]) -> list[int]:
        start = aborted_streams(stalling_server)
        indices = run()
        assert aborted_streams(stalling_server) > start, "the server never cut the stream"
        return indices

    address = stalling_server.address

    async def sync_side() -> list[int]:
        with gradserve.Client(address, timeout=120) as client:
            return await slow_reader(client)

    async def async_side() -> list[int]:
        async with gradserve.AsyncClient(address, timeout=120) as client:
            return await slow_reader(client)

    assert cut_while(lambda: asyncio.run(sync_side())) == [0, 1, 2]
    assert cut_while(lambda: asyncio.run(async_side())) == [0, 1, 2]
    assert aborted_streams(stalling_server) >= before + 2
