"""Server streams paced by their reader.

gRPC completes a write once the transport has taken the message, and takes a
message or two ahead of a reader that stops reading (measured: ~2 pieces per
unread stream, whatever their size). So a stream's pieces are small, each piece is
made only when the previous write has completed, and the room for it is reserved
from the server streams' budget (``--max-stream-bytes``) only once there is a piece
to make: a stream waiting for its next message to exist (a job's results stream
waits for its next task, which may take hours) holds no room. Streams that nobody
reads hold a piece or two each and, all together, at most that budget; the rest
wait for room, holding only the message they wait to send: a header, or a piece
cut from a ComputeStream reply (held whole anyway, in ``--max-inflight-bytes``).
A reader that takes no piece for ``--stream-stall-seconds`` loses its stream, and
the room, with ABORTED: it was slow, not over a budget, and the SDK resumes a job's
results where it left off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gradserve_server.budgets import InFlight
from gradserve_server.errors import aborted, decoded, exhausted

# The bytes of one piece of a server stream (a ComputeStream reply, GetJobResults).
STREAM_PIECE_BYTES = 512 * 1024


@dataclass(frozen=True)
class Later:
    """A piece not read or cut yet: :func:`send_paced` makes it once it has room."""

    make: Callable[[], Awaitable[Any]]


async def send_paced(
    context: Any,
    messages: AsyncIterator[Any],
    inflight: InFlight,
    what: str,
    stall_s: float,
) -> None:
    """Write ``messages`` to a server stream one at a time, each made only once the
    previous one was taken and there is room for it.

    ``messages`` yields small messages (headers) as they are, and bulk pieces as
    :class:`Later`, so that waiting for the next message to exist costs no room,
    and a piece's bytes exist only while room is held for them: produced only as
    the client reads, never ahead of the budget.
    """
    async with contextlib.aclosing(messages) as pending:  # type: ignore[type-var]
        async for item in pending:
            # what the transport holds of a stream that is not read: this write, and one before
            held = await inflight.wait(2 * STREAM_PIECE_BYTES, what, stall_s)
            try:
                message = await item.make() if isinstance(item, Later) else item
                try:
                    await asyncio.wait_for(context.write(message), stall_s)
                except TimeoutError:
                    raise aborted(
                        f"{what}: the reader took nothing for {stall_s:.0f} s; the stream was "
                        "closed to free the server's memory (ask again from where you were: "
                        "the SDK does this by itself for a job's results)"
                    ) from None
                del message
            finally:
                held.release()


async def next_part(parts: AsyncIterator[Any], stall_s: float) -> Any | None:
    """The next part of a request stream, decoded (None at its end); a sender that
    sends nothing for ``stall_s`` loses its stream, and what it held."""
    try:
        received = await asyncio.wait_for(anext(parts), stall_s)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise exhausted(
            f"ComputeStream: the sender sent nothing for {stall_s:.0f} s; the "
            "stream was closed to free what it held"
        ) from None
    return decoded(received)


async def prepend(first: Any | None, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``first`` (unless None), then ``rest``."""
    if first is not None:
        yield first
    async for part in rest:
        yield part
