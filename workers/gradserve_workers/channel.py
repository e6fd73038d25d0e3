"""The actor's end of its direct channel: chunk calls from the server on this host
over a Unix socket, beside Ray's actor calls.

Why: a Ray actor call costs 1.1-1.8 ms a round trip on an idle 2-core machine and
more while the workers compute; a Unix socket between two processes costs ~0.05 ms
(docs/performance.md, "The direct channel"). The server sends packed chunk calls
(:func:`~gradserve_workers.tasks.pack_call`: small ones, and calls whose arrays lie in
shared memory) over it when the actor is on its host. Ray still owns the actor: it
starts, places and kills it, and carries every other call.

Frames, both ways: a header (:data:`HEADER`: kind, call id, payload bytes) and the
payload.

- ``CALL`` (server to actor): a packed chunk call; answered by ``REPLY`` (the
  :class:`~gradserve_workers.tasks.ChunkResult`, see :func:`encode_reply`) or
  ``FAILED`` (a message: the call could not even start, which is the server's bug, as
  a failed Ray call would be).
- ``CANCEL`` (server to actor): stop that call, as ``ray.cancel`` does (the language
  checks its flag between operations).

Nothing polls: one thread blocks in ``recv``; replies are sent by the compute
thread as each call ends.

Who may send: the socket has an abstract name (Linux: no file, gone with the
process). A connection must first send the 32-byte token the server got through
Ray's own call (:meth:`GradActor.channel`), compared in constant time; nothing it
sends is unpickled before that.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import pickle
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("gradserve.channel")

HEADER = struct.Struct("<BQQ")  # kind, call id, payload bytes
# a reply's payload: its pickle's length and the number of arrays after it; each array
# starts at a multiple of ALIGN in the payload (its length first)
REPLY_HEAD = struct.Struct("<QI")
BUFFER_HEAD = struct.Struct("<Q")
ALIGN = 64
CALL, CANCEL, REPLY, FAILED = 1, 2, 3, 4
TOKEN_BYTES = 32
# the largest frame the actor reads: packed calls are far smaller (tasks.pack_call)
MAX_CALL_BYTES = 64 * 2**20
# the socket's send buffer for replies: the system's most, up to this (Linux's
# default cap is 208 KiB; a larger one takes fewer wake-ups to move a large reply)
SOCKET_BUFFER_BYTES = 4 * 2**20
# a connection that does not send the token this soon is closed
HANDSHAKE_SECONDS = 5.0

# (message) -> (the call's finished result, its watch): the actor's way to start a
# call (GradActor._start); ``watch.cancel()`` stops it
Start = Callable[[bytes], tuple["Future[Any]", Any]]

__all__ = [
    "CALL", "CANCEL", "FAILED", "HEADER", "REPLY", "TOKEN_BYTES", "Endpoint", "decode_reply",
    "encode_reply", "frame",
]  # fmt: skip


def frame(kind: int, call_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, call_id, len(payload)) + payload


def encode_reply(call_id: int, result: Any) -> list[bytes | memoryview]:
    """A ``REPLY`` frame of ``result`` as pieces to send in order: its arrays travel out
    of band (pickle protocol 5), as views of their own memory, so a large result is
    copied once, by the socket, and not into a pickle first (a 32 MB Jacobian took
    ~110 ms more than by Ray's object store that way)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    head = REPLY_HEAD.pack(len(data), len(buffers))
    pieces: list[bytes | memoryview] = [head, data]
    size = len(head) + len(data)
    for buffer in buffers:
        raw = buffer.raw()
        pad = -(size + BUFFER_HEAD.size) % ALIGN
        pieces += [b"\0" * pad + BUFFER_HEAD.pack(raw.nbytes), raw]
        size += pad + BUFFER_HEAD.size + raw.nbytes
    return [HEADER.pack(REPLY, call_id, size), *pieces]


def decode_reply(payload: bytearray) -> Any:
    """The result of a ``REPLY`` payload (see :func:`encode_reply`); its arrays are views
    of ``payload``, which they keep alive."""
    view = memoryview(payload)
    size, count = REPLY_HEAD.unpack_from(view)
    at = REPLY_HEAD.size + size
    data = view[REPLY_HEAD.size : at]
    buffers = []
    for _ in range(count):
        at += -(at + BUFFER_HEAD.size) % ALIGN
        (nbytes,) = BUFFER_HEAD.unpack_from(view, at)
        at += BUFFER_HEAD.size
        buffers.append(view[at : at + nbytes])
        at += nbytes
    return pickle.loads(data, buffers=buffers)


def _read_exact(conn: socket.socket, n: int) -> bytes | None:
    """``n`` bytes, or None at the end of the stream."""
    chunks = bytearray()
    while len(chunks) < n:
        part = conn.recv(min(n - len(chunks), 1 << 20))
        if not part:
            return None
        chunks += part
    return bytes(chunks)


class Endpoint:
    """The listening socket and the thread that serves the server's connection."""

    def __init__(self, start: Start) -> None:
        self._start = start
        self.token = secrets.token_bytes(TOKEN_BYTES)
        # an abstract name: no file to leave behind when Ray kills the process
        self.address = f"\0gradserve-{os.getpid()}-{secrets.token_hex(8)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.address)
        self._listener.listen(2)
        self._send_lock = threading.Lock()
        threading.Thread(target=self._accept, name="gradserve-channel", daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            try:
                self._serve(conn)
            except OSError as error:  # the server went away: wait for the next one
                log.info("channel connection ended: %s", error)
            finally:
                with contextlib.suppress(OSError):
                    conn.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_SECONDS)
        token = _read_exact(conn, TOKEN_BYTES)
        if token is None or not hmac.compare_digest(token, self.token):
            log.warning("channel: a connection without the token was closed")
            return
        conn.settimeout(None)
        with contextlib.suppress(OSError):  # fewer, larger writes for large replies
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        cancels: dict[int, Callable[[], None]] = {}
        while True:
            header = _read_exact(conn, HEADER.size)
            if header is None:
                return
            kind, call_id, size = HEADER.unpack(header)
            if kind == CANCEL:
                cancel = cancels.get(call_id)
                if cancel is not None:
                    cancel()
                continue
            if kind != CALL or size > MAX_CALL_BYTES:
                log.warning("channel: frame kind %d of %d bytes; closing", kind, size)
                return
            message = _read_exact(conn, size)
            if message is None:
                return
            try:
                future, watch = self._start(message)
            except Exception as error:  # not a call the server packed: its bug
                self._send(conn, frame(FAILED, call_id, repr(error).encode()))
                continue
            cancels[call_id] = watch.cancel
            future.add_done_callback(
                lambda f, i=call_id: self._reply(conn, i, f, cancels)  # type: ignore[misc]
            )

    def _reply(
        self,
        conn: socket.socket,
        call_id: int,
        future: Future[Any],
        cancels: dict[int, Callable[[], None]],
    ) -> None:
        cancels.pop(call_id, None)
        try:
            pieces = encode_reply(call_id, future.result())
        except Exception as error:
            pieces = [frame(FAILED, call_id, repr(error).encode())]
        self._send(conn, *pieces)

    def _send(self, conn: socket.socket, *pieces: bytes | memoryview) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # gone: the server sees EOF
            for piece in pieces:
                conn.sendall(piece)
