"""The server's end of a worker's direct channel (see
:mod:`gradserve_workers.channel` for why, the frames and who may connect).

A :class:`Channel` is one connection to one actor on this host. :meth:`Channel.call`
sends a packed chunk call and returns a :class:`ChannelCall`, which dispatch.py
treats as it treats a Ray ref: awaited under the chunk's timeout, cancelled when
the caller goes away. When the connection ends (the actor's process died) every
call in flight fails with :class:`ChannelLost`, which dispatch.py handles as a lost
worker: retired, replaced, and the chunk run again elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Generator
from typing import Any

from gradserve_workers.channel import (
    CALL,
    CANCEL,
    FAILED,
    HEADER,
    REPLY,
    SOCKET_BUFFER_BYTES,
    decode_reply,
    frame,
)

__all__ = ["Channel", "ChannelCall", "ChannelFailed", "ChannelLost"]


class ChannelLost(ConnectionError):
    """The actor's end of the channel closed: its process is gone."""


class ChannelFailed(RuntimeError):
    """The actor could not start a call (a message the server did not pack right)."""


class ChannelCall:
    """One call in flight. Awaiting it never cancels it (as with a Ray ref, the
    waiting stops, the call does not); :meth:`cancel` asks the actor to stop it."""

    def __init__(self, channel: Channel, call_id: int, future: asyncio.Future[Any]) -> None:
        self._channel = channel
        self._id = call_id
        self.future = future

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.shield(self.future).__await__()

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        if not self.future.done():
            self._channel.send(frame(CANCEL, self._id))


class _Frames(asyncio.BufferedProtocol):
    """Reads the actor's frames straight into their own buffers: a header, then a
    payload of the size it names, received into one bytearray (a large reply's arrays
    are then views of it: no copy after the socket's)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._header = bytearray(HEADER.size)
        self._target = memoryview(self._header)
        self._filled = 0
        self._frame: tuple[int, int] | None = None  # (kind, call id) of the payload
        self._payload = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._target):
            return
        if self._frame is None:
            kind, call_id, size = HEADER.unpack(self._header)
            self._frame = (kind, call_id)
            self._payload = bytearray(size)
            self._target, self._filled = memoryview(self._payload), 0
            if size:
                return
        kind, call_id = self._frame
        payload = self._payload
        self._frame, self._payload = None, bytearray()
        self._target, self._filled = memoryview(self._header), 0
        self._channel._received(kind, call_id, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel._lost(f"{type(exc).__name__}: {exc}" if exc else "end of stream")


class Channel:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, address: str, token: bytes) -> Channel:
        channel = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Frames(channel), address)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # as the actor's send buffer (its module)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        channel._transport = transport  # type: ignore[assignment]
        transport.write(token)  # type: ignore[attr-defined]
        return channel

    def call(self, message: bytes) -> ChannelCall:
        """Send one packed chunk call (:func:`gradserve_workers.tasks.pack_call`)."""
        if self.closed:
            raise ChannelLost("the worker's channel is closed")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.send(frame(CALL, call_id, message))
        return ChannelCall(self, call_id, future)

    def send(self, data: bytes) -> None:
        # no drain: a packed call is small, and the actor reads as it goes
        if not self.closed and self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self._lost("closed by the server")

    def _received(self, kind: int, call_id: int, payload: bytearray) -> None:
        try:
            if kind == REPLY:  # decoded while the call is still pending (see _lost)
                outcome: Any = decode_reply(payload)
            elif kind == FAILED:
                outcome = ChannelFailed(payload.decode(errors="replace"))
            else:
                raise ValueError(f"frame kind {kind} from a worker")
        except Exception as error:  # not a frame of ours: every call is lost
            self._lost(f"{type(error).__name__}: {error}")
            return
        future = self._pending.pop(call_id, None)
        if future is None or future.done():
            return
        if kind == REPLY:
            future.set_result(outcome)
        else:
            future.set_exception(outcome)

    def _lost(self, why: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ChannelLost(f"the worker's channel closed ({why})"))
                future.exception()  # retrieved here: not every call is awaited again
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
