"""Server streams paced by their reader.

gRPC completes a write once the transport has taken the message, and takes a
message or two ahead of a reader that stops reading (measured: ~2 pieces per
unread stream, whatever their size). So a stream's pieces are small, each piece is
produced only when the previous write has completed, and the room for it is
reserved from the server streams' budget (``--max-stream-bytes``) before it is
read or cut: streams that nobody reads hold a piece or two each and, all together,
at most that budget; the rest wait for room, holding nothing. A reader that takes
no piece for ``--stream-stall-seconds`` loses its stream, and the room.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gradserve_server.budgets import InFlight
from gradserve_server.errors import exhausted

# The bytes of one piece of a server stream (a ComputeStream reply, GetJobResults).
STREAM_PIECE_BYTES = 512 * 1024


async def send_paced(
    context: Any,
    messages: AsyncIterator[Any],
    inflight: InFlight,
    what: str,
    stall_s: float,
) -> None:
    """Write ``messages`` to a server stream one at a time, each produced only once
    there is room for it and the previous one was taken."""
    async with contextlib.aclosing(messages) as pending:  # type: ignore[type-var]
        while True:
            # what the transport holds of a stream that is not read: this write, and one before
            held = await inflight.wait(2 * STREAM_PIECE_BYTES, what, stall_s)
            try:
                try:
                    message = await anext(pending)
                except StopAsyncIteration:
                    return
                try:
                    await asyncio.wait_for(context.write(message), stall_s)
                except TimeoutError:
                    raise exhausted(
                        f"{what}: the reader took nothing for {stall_s:.0f} s; the stream was "
                        "closed to free the server's memory (read it, or start again later)"
                    ) from None
            finally:
                held.release()
