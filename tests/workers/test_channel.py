"""The direct channel between the server and an actor on its host, both ends, without
Ray: the actor class runs in this process and the server's Channel talks to it over
the real socket (gradserve_workers/channel.py, gradserve_server/channel.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from support.standins import RUNAWAY, stand_in_actor_socket

from gradserve_server.channel import Channel, ChannelFailed, ChannelLost
from gradserve_workers.actor import GradActor
from gradserve_workers.channel import (
    CALL,
    HEADER,
    MAX_CALL_BYTES,
    REPLY,
    TOKEN_BYTES,
    Endpoint,
    decode_reply,
    encode_reply,
    frame,
)
from gradserve_workers.tasks import ChunkCall, ComputeSpec, pack_call


@pytest.fixture(scope="module")
def actor() -> Iterator[GradActor]:
    yield GradActor()


def _call(source: str, x: np.ndarray, ops: tuple[str, ...] = ("value", "grad")) -> bytes:
    spec = ComputeSpec(source, f"h-{source}", ops, None, False, "float64")
    return pack_call(ChunkCall(spec, {"x": x}, 0, 1))


async def _open(actor: GradActor) -> Channel:
    where = actor.channel()
    assert where is not None and where["node"] == socket.gethostname()
    return await Channel.open(where["address"], where["token"])


def test_a_call_by_the_channel_answers_as_the_ray_method_does(actor: GradActor) -> None:
    x = np.array([1.0, 2.0, 3.0])
    message = _call("2 * dot(x, x)", x)

    async def run() -> Any:
        channel = await _open(actor)
        try:
            return await asyncio.gather(channel.call(message), channel.call(message))
        finally:
            channel.close()

    by_channel = asyncio.run(run())
    by_ray_method = actor.run(message)
    for result in by_channel:
        assert result.error is None and result.actor == actor.name
        np.testing.assert_array_equal(result.outputs["grad"]["x"], 4 * x)
        np.testing.assert_array_equal(
            result.outputs["grad"]["x"], by_ray_method.outputs["grad"]["x"]
        )
        assert float(result.outputs["value"][""]) == 28.0


def test_the_actor_opens_one_endpoint_however_often_asked(actor: GradActor) -> None:
    first, second = actor.channel(), actor.channel()
    assert first is not None and second is not None
    assert first["address"] == second["address"] and first["token"] == second["token"]
    assert first["address"].startswith("\0")  # abstract: no file left behind
    assert len(first["token"]) == TOKEN_BYTES


def test_a_user_error_comes_back_as_data(actor: GradActor) -> None:
    async def run() -> Any:
        channel = await _open(actor)
        try:
            return await channel.call(_call("x * x", np.ones(3), ("grad",)))
        finally:
            channel.close()

    result = asyncio.run(run())
    assert result.error is not None and result.error.kind == "invalid"
    assert "not a scalar" in result.error.message


def test_a_message_the_server_did_not_pack_fails_the_call_not_the_channel(
    actor: GradActor,
) -> None:
    async def run() -> tuple[BaseException, Any]:
        channel = await _open(actor)
        try:
            with pytest.raises(ChannelFailed) as failed:
                await channel.call(b"not a pickle")
            after = await channel.call(_call("sum(x)", np.ones(2)))
            return failed.value, after
        finally:
            channel.close()

    error, after = asyncio.run(run())
    assert "UnpicklingError" in str(error) or "pickle" in str(error).lower()
    assert after.error is None and float(after.outputs["value"][""]) == 2.0


def test_cancel_stops_a_running_call_and_the_actor_serves_on(actor: GradActor) -> None:
    async def run() -> tuple[Any, float, Any]:
        channel = await _open(actor)
        try:
            call = channel.call(_call(RUNAWAY, np.eye(200) / 200, ("value",)))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await call  # the wait stops here; the call does not
            assert not call.done()
            started = time.perf_counter()
            call.cancel()
            stopped = await call
            waited = time.perf_counter() - started
            return stopped, waited, await channel.call(_call("sum(x)", np.ones(2)))
        finally:
            channel.close()

    stopped, waited, after = asyncio.run(run())
    assert stopped.error is not None and "cancel" in stopped.error.message.lower()
    assert waited < 2.0
    assert after.error is None and float(after.outputs["value"][""]) == 2.0


def _started_endpoint() -> tuple[Endpoint, list[bytes]]:
    started: list[bytes] = []

    def start(message: bytes) -> tuple[Future[Any], Any]:
        started.append(message)
        future: Future[Any] = Future()
        future.set_result({"echo": message})
        return future, Future()  # a watch stand-in: Future has cancel()

    return Endpoint(start), started


def test_nothing_is_started_for_a_connection_without_the_token() -> None:
    endpoint, started = _started_endpoint()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(endpoint.address)
        conn.sendall(b"\0" * TOKEN_BYTES + frame(CALL, 1, b"payload"))
        conn.settimeout(5)
        # closed, never answered (reset: it closed with our frame unread)
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(HEADER.size) == b""
    assert started == []
    # the rightful server still gets in after that
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(endpoint.address)
        conn.sendall(endpoint.token + frame(CALL, 7, b"payload"))
        conn.settimeout(5)
        kind, call_id, _ = HEADER.unpack(conn.recv(HEADER.size, socket.MSG_WAITALL))
        assert (kind, call_id) == (REPLY, 7)
    assert started == [b"payload"]


def test_calls_in_flight_fail_as_lost_when_the_actor_end_closes() -> None:
    """What the server sees when the actor's process dies: dispatch.py retires the
    worker and runs the chunk again elsewhere (tests/server/test_channel_dispatch.py)."""

    async def run() -> tuple[Channel, BaseException]:
        channel = await Channel.open(address, b"t" * TOKEN_BYTES)
        call = channel.call(b"message")
        conn, _ = listener.accept()  # the "actor": reads the call, then dies
        conn.recv(1024)
        conn.close()
        with pytest.raises(ChannelLost) as lost:
            await call
        return channel, lost.value

    with stand_in_actor_socket() as (listener, address):
        channel, error = asyncio.run(run())
    assert channel.closed
    with pytest.raises(ChannelLost):
        channel.call(b"another")
    assert "closed" in str(error)


def test_a_reply_that_is_not_one_fails_the_calls_instead_of_leaving_them_waiting() -> None:
    async def run() -> Channel:
        channel = await Channel.open(address, b"t" * TOKEN_BYTES)
        first, second = channel.call(b"one"), channel.call(b"two")
        conn, _ = listener.accept()
        conn.sendall(frame(REPLY, 1, b"not a pickle"))
        for call in (first, second):
            with pytest.raises(ChannelLost, match="channel closed"):
                await asyncio.wait_for(call, 5)
        conn.close()
        return channel

    with stand_in_actor_socket() as (listener, address):
        channel = asyncio.run(run())
    assert channel.closed


def test_a_reply_carries_its_arrays_out_of_band_whatever_their_layout() -> None:
    rng = np.random.default_rng(0)
    big = rng.normal(size=(600, 500))
    result = {
        "c": big,  # C-contiguous: sent as its own memory, not copied into the pickle
        "f": big.T,  # Fortran-contiguous: likewise
        "strided": big[::2, ::3],  # neither: pickled in band
        "small": np.arange(3, dtype=np.float32),
        "text": "and the rest of a ChunkResult",
    }
    pieces = encode_reply(5, result)
    kind, call_id, size = HEADER.unpack(pieces[0])
    assert (kind, call_id) == (REPLY, 5)
    # the large arrays' own memory is among the pieces (zero-copy on the way out)
    assert any(isinstance(p, memoryview) and p.nbytes == big.nbytes for p in pieces[1:])
    payload = bytearray(b"".join(bytes(p) for p in pieces[1:]))
    assert len(payload) == size
    got = decode_reply(payload)
    for key in ("c", "f", "strided", "small"):
        np.testing.assert_array_equal(got[key], result[key])
        assert got[key].dtype == result[key].dtype
    assert got["text"] == result["text"]
    # the large ones are views of the payload, aligned for any dtype
    for key in ("c", "f"):
        assert got[key].base is not None and got[key].ctypes.data % 16 == 0


@pytest.mark.parametrize(
    "bad", [frame(REPLY, 1, b"x"), HEADER.pack(CALL, 1, MAX_CALL_BYTES + 1)],
    ids=["not a call", "too large a call"],
)  # fmt: skip
def test_a_frame_that_is_not_a_call_the_actor_takes_closes_the_connection(bad: bytes) -> None:
    endpoint, started = _started_endpoint()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(endpoint.address)
        conn.sendall(endpoint.token + bad)
        conn.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(HEADER.size) == b""
    assert started == []
