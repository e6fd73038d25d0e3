"""Wake-ups for whoever follows a job (WatchJob, GetJobResults) when it changes."""

from __future__ import annotations

import asyncio
import contextlib


class Notifier:
    """One event per job, replaced on every change.

    Take :meth:`event` *before* reading the state it guards, then await it: a change
    between the read and the wait sets that same event, so no wake-up is lost.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, job_id: str) -> asyncio.Event:
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        return event

    def notify(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
