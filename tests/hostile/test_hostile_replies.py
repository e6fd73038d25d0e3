"""Issue 16, item 4: a reply is priced from shapes before the work (and, where only
the function's output can tell, by the worker right after its first evaluation);
over --max-reply-bytes (32 MiB here) is RESOURCE_EXHAUSTED with the estimate, the
SDK does not retry it, big replies within the budget stream, and memory comes back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from support.cluster import ServerProcess
from support.hostile import Watch, scaled

import gradserve


def refusals(server: ServerProcess) -> int:
    return sum("RESOURCE_EXHAUSTED" in line for line in server.lines)


def test_a_jacobian_too_large_to_send_is_refused_before_it_is_built(
    hostile_server: ServerProcess, hostile_client: gradserve.Client
) -> None:
    """jacobian("x * 1.0", ones(10000)): 800 MB of reply, refused by the worker after one
    evaluation of the function, once (the SDK does not retry it through the stream)."""
    before = refusals(hostile_server)
    with Watch(hostile_server) as watch:
        started = time.monotonic()
        with pytest.raises(gradserve.ResourceExhaustedError) as info:
            hostile_client.jacobian("x * 1.0", np.ones(10_000))
        seconds = time.monotonic() - started
    message = info.value.message
    assert "800,000,000 bytes" in message and "--max-reply-bytes" in message, message
    assert "10000 outputs x 10000 inputs" in message
    assert seconds < 5
    time.sleep(0.2)  # the server logs its refusal as it sends it
    assert refusals(hostile_server) - before == 1  # no second try through ComputeStream
    watch.check()


def test_a_batched_hessian_over_the_budget_is_refused_from_shapes_alone(
    hostile_server: ServerProcess, hostile_client: gradserve.Client
) -> None:
    """40 points x 3,000 inputs: 2.88 GB of Hessians, known from the input's shape."""
    with Watch(hostile_server) as watch:
        started = time.monotonic()
        with pytest.raises(gradserve.ResourceExhaustedError) as info:
            hostile_client.hessian("sum(x ** 3)", np.ones((40, 3000)), batched=True)
        seconds = time.monotonic() - started
    assert "2,880,000,000 bytes" in info.value.message, info.value.message
    assert "hessian: 3000 x 3000 inputs; x 40 points x 8 bytes" in info.value.message
    assert seconds < 3
    watch.check()


def test_replies_within_the_budget_stream_and_memory_comes_back(
    hostile_server: ServerProcess, hostile_client: gradserve.Client
) -> None:
    """A Jacobian over the 16 MiB message limit (18 MB) streams, and a batched one in
    several chunks arrives whole; the server's memory returns after each."""
    n = scaled(1500, 2000)
    x = np.linspace(-1.0, 1.0, n)
    with Watch(hostile_server) as watch:
        jac = hostile_client.jacobian("x * 2.0", x)
        rows = hostile_client.grad("sum(sin(x))", np.tile(x[:100], (scaled(10_000, 40_000), 1)),
                                   batched=True)  # fmt: skip
    np.testing.assert_array_equal(jac, 2.0 * np.eye(n))
    np.testing.assert_allclose(rows[-1], np.cos(x[:100]), rtol=1e-15)
    watch.check()


def test_memory_comes_back_after_refusals(
    hostile_server: ServerProcess, hostile_client: gradserve.Client
) -> None:
    """Three refused calls in a row leave the server's RSS where it was (a refusal that
    kept what it had allocated would grow it by about 1.5 GB each time)."""
    with Watch(hostile_server) as watch:
        for _ in range(3):
            with pytest.raises(gradserve.ResourceExhaustedError):
                hostile_client.jacobian("x * 1.0", np.ones(10_000))
    watch.check()


def test_the_async_client_takes_a_streamed_reply_in_as_it_arrives(
    hostile_server: ServerProcess,
) -> None:
    x = np.linspace(-1.0, 1.0, 300_000)  # 2.4 MB: streamed both ways

    async def run() -> np.ndarray:
        async with gradserve.AsyncClient(hostile_server.address, timeout=60) as client:
            return await client.value("x * 2.0", x)  # type: ignore[no-any-return]

    np.testing.assert_array_equal(asyncio.run(run()), 2.0 * x)
