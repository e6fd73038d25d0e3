"""Dispatch over a worker's direct channel (channel.py): the lost actor, the timeout
that cancels through the channel, and which calls take the channel at all.

The actors' ends are real channel endpoints (gradserve_workers.channel.Endpoint) in
this process, whose calls are stand-ins; the pool is the real ActorPool over
stand-in Ray handles (as in test_server_pool.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from support.standins import Ready, stand_in_actor_socket

from gradserve_server import dispatch, errors
from gradserve_server.channel import Channel
from gradserve_server.pool import ActorPool
from gradserve_workers.channel import Endpoint

_ids = itertools.count()


class _Handle:
    """A stand-in for a Ray actor handle: ``info`` answers, ``run`` records."""

    def __init__(self) -> None:
        self.ident = next(_ids)
        self.ray_calls: list[bytes] = []
        handle = self

        class _Info:
            def remote(self) -> Ready:
                return Ready({"name": f"actor-{handle.ident}"})

        class _Run:
            def remote(self, message: bytes) -> Ready:
                handle.ray_calls.append(message)
                return Ready(f"by ray: {message!r}")

        self.info, self.run = _Info(), _Run()


class _Stoppable:
    """A call that runs until its watch is cancelled (as the language stops one)."""

    def __init__(self) -> None:
        self.future: Future[Any] = Future()
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1
        if not self.future.done():
            self.future.set_result("stopped")


def _echo(message: bytes) -> tuple[Future[Any], Any]:
    future: Future[Any] = Future()
    future.set_result(f"by channel: {message!r}")
    return future, _Stoppable()


async def _pool(size: int) -> ActorPool:
    pool = ActorPool(_Handle, size, cancel_grace=2.0)
    await pool.start()
    return pool


async def _attach(pool: ActorPool, starts: list[Any]) -> list[Endpoint]:
    """Give each worker, in order, a channel to an endpoint with that ``start``."""
    endpoints = [Endpoint(start) for start in starts]
    for worker, endpoint in zip(pool.workers, endpoints, strict=True):
        worker.channel = await Channel.open(endpoint.address, endpoint.token)
    return endpoints


def test_a_packed_call_takes_the_channel_and_any_other_call_takes_ray() -> None:
    async def run() -> tuple[Any, Any, list[bytes]]:
        pool = await _pool(1)
        await _attach(pool, [_echo])
        packed = await dispatch.run_chunk(pool, "t", dispatch.Packed(b"m1"), 10.0)
        other = await dispatch.run_chunk(pool, "t", lambda h: h.run.remote(b"m2"), 10.0)
        return packed, other, pool.workers[0].handle.ray_calls

    packed, other, ray_calls = asyncio.run(run())
    assert packed == "by channel: b'm1'"
    assert other == "by ray: b'm2'" and ray_calls == [b"m2"]


def test_without_a_channel_a_packed_call_goes_by_ray() -> None:
    async def run() -> Any:
        pool = await _pool(1)
        return await dispatch.run_chunk(pool, "t", dispatch.Packed(b"m"), 10.0)

    assert asyncio.run(run()) == "by ray: b'm'"


def test_a_worker_whose_channel_closes_mid_call_is_replaced_and_the_chunk_runs_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[Any] = []
    # Ray's kill of a stand-in handle would start a local Ray (5 s) to refuse it
    monkeypatch.setattr("ray.kill", lambda handle, no_restart: killed.append(handle))

    async def run() -> tuple[Any, ActorPool, Any]:
        pool = await _pool(1)
        first = pool.workers[0]
        first.channel = await Channel.open(address, b"t" * 32)
        # the actor dies once the call reached it: its end of the socket closes
        loop = asyncio.get_running_loop()

        def die() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.close()

        dying = loop.run_in_executor(None, die)
        result = await dispatch.run_chunk(pool, "t", dispatch.Packed(b"m"), 10.0)
        await dying
        return result, pool, first

    with stand_in_actor_socket() as (listener, address):
        result, pool, first = asyncio.run(run())
    # the replacement had no channel yet (channels off in this pool): Ray's call ran it
    assert result == "by ray: b'm'"
    assert first.retired and pool.replaced == 1 and killed == [first.handle]
    assert first.channel is not None
    assert first.channel.closed


def test_a_chunk_past_its_timeout_is_cancelled_through_the_channel() -> None:
    call = _Stoppable()

    async def run() -> tuple[BaseException, ActorPool]:
        pool = await _pool(1)
        await _attach(pool, [lambda message: (call.future, call)])
        with pytest.raises(errors.ServiceError) as caught:
            await dispatch.run_chunk(pool, "t", dispatch.Packed(b"m"), 0.2)
        for _ in range(100):  # the worker comes back once the stopped call answers
            if pool.idle:
                break
            await asyncio.sleep(0.02)
        return caught.value, pool

    error, pool = asyncio.run(run())
    assert errors.to_status(error).code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call.cancelled == 1
    assert pool.reclaimed == 1 and pool.replaced == 0 and pool.idle == 1


def test_a_caller_that_goes_away_cancels_its_call_through_the_channel() -> None:
    call = _Stoppable()

    async def run() -> ActorPool:
        pool = await _pool(1)
        await _attach(pool, [lambda message: (call.future, call)])
        task = asyncio.ensure_future(dispatch.run_chunk(pool, "t", dispatch.Packed(b"m"), 10.0))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if pool.idle:
                break
            await asyncio.sleep(0.02)
        return pool

    pool = asyncio.run(run())
    assert call.cancelled == 1 and pool.reclaimed == 1 and pool.idle == 1


def test_a_pool_opens_channels_to_the_actors_on_its_host_and_no_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = Endpoint(_echo)
    here = {"address": endpoint.address, "token": endpoint.token, "node": socket.gethostname()}
    answers: list[Any] = [here, {**here, "node": "another-host"}, RuntimeError("no channel")]

    def make() -> _Handle:
        handle, answer = _Handle(), answers.pop(0)

        class _Channel:
            def remote(self) -> Ready:
                if isinstance(answer, Exception):
                    raise answer
                return Ready(answer)

        handle.channel = _Channel()  # type: ignore[attr-defined]
        return handle

    async def run() -> list[bool]:
        pool = ActorPool(make, 3, channels=True)
        await pool.start()
        return [w.open_channel is not None for w in pool.workers]

    with caplog.at_level(logging.WARNING, logger="gradserve.pool"):
        opened = asyncio.run(run())
    # on this host: by its channel; elsewhere, or where opening failed: by Ray alone
    assert opened == [True, False, False]
    assert caplog.text.count("no direct channel") == 1
