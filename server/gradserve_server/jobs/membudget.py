"""A budget of bytes held in server memory at once, shared by every job.

A job task holds its inputs (drawn samples, decoded literals and their copy for
the workers) while its chunks run; the budget makes tasks wait for room instead
of letting several big ones hold gigabytes together. A task larger than the whole
budget is refused at submission, so waiting always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class ByteBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # 0: no bound
        self.used = 0
        self._room = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Wait until ``nbytes`` fit, hold them for the block."""
        n = min(nbytes, self.capacity) if self.capacity else 0
        while n and self.used + n > self.capacity:
            room = self._room
            await room.wait()
        self.used += n
        try:
            yield
        finally:
            self.used -= n
            if n:
                room, self._room = self._room, asyncio.Event()
                room.set()
