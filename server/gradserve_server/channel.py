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
import logging
import pickle
from collections.abc import Generator
from typing import Any

from gradserve_workers.channel import CALL, CANCEL, FAILED, HEADER, REPLY, frame

log = logging.getLogger("gradserve.channel")

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


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, address: str, token: bytes) -> Channel:
        reader, writer = await asyncio.open_unix_connection(address)
        writer.write(token)
        await writer.drain()
        return cls(reader, writer)

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
        if not self.closed:
            self._writer.write(data)

    def close(self) -> None:
        if not self.closed:
            self._lost("closed by the server")
        self._reading.cancel()

    async def _read(self) -> None:
        try:
            while True:
                kind, call_id, size = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                payload = await self._reader.readexactly(size)
                if kind == REPLY:  # decoded while the call is still pending (see _lost)
                    outcome: Any = pickle.loads(payload)
                elif kind == FAILED:
                    outcome = ChannelFailed(payload.decode(errors="replace"))
                else:
                    raise ValueError(f"frame kind {kind} from a worker")
                future = self._pending.pop(call_id, None)
                if future is None or future.done():
                    continue
                if kind == REPLY:
                    future.set_result(outcome)
                else:
                    future.set_exception(outcome)
        except Exception as error:  # closed, cut short, or not a frame of ours: all lost
            self._lost(f"{type(error).__name__}: {error}")

    def _lost(self, why: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ChannelLost(f"the worker's channel closed ({why})"))
                future.exception()  # retrieved here: not every call is awaited again
        with contextlib.suppress(Exception):
            self._writer.close()
