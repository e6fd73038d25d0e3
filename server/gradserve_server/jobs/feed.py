"""One reader per watched job, shared by all its watchers.

Reading a job aggregates over its tasks (a 100,000-task job takes tens of
milliseconds), so WatchJob must not read per watcher: for each job that someone
watches, one feed task waits for the job's change notifications, coalesces them,
reads the job once off the event loop and publishes the snapshot; every watcher
awaits the next snapshot. Twenty watchers cost what one does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gradserve_server.jobs.notify import Notifier

T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    version: int
    value: T | None  # None: the job is gone (deleted)
    final: bool  # nothing will change any more


class _Feed(Generic[T]):
    def __init__(self) -> None:
        self.latest: Snapshot[T] | None = None
        self.changed = asyncio.Event()
        self.error: BaseException | None = None
        self.watchers = 0
        self.task: asyncio.Task[None] | None = None

    def publish(self, snapshot: Snapshot[T]) -> None:
        self.latest = snapshot
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.changed.set()


class Feeds(Generic[T]):
    """``read(job_id)`` gives (value, final); values are compared to skip non-changes."""

    def __init__(
        self,
        notifier: Notifier,
        read: Callable[[str], Awaitable[tuple[T | None, bool]]],
        settle_s: float,
        idle_s: float = 5.0,
    ) -> None:
        self._notifier = notifier
        self._read = read
        self._settle_s = settle_s
        self._idle_s = idle_s
        self._feeds: dict[str, _Feed[T]] = {}

    def watched(self) -> int:
        return len(self._feeds)

    async def follow(self, job_id: str) -> AsyncIterator[Snapshot[T]]:
        """The job's latest snapshot, then each new one, until the final one."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed()
            feed.task = asyncio.create_task(self._produce(job_id, feed), name=f"feed-{job_id}")
        feed.watchers += 1
        try:
            seen = -1
            while True:
                latest = feed.latest
                if latest is not None and latest.version > seen:
                    seen = latest.version
                    yield latest
                    if latest.final:
                        return
                    continue
                if feed.error is not None:
                    raise feed.error
                await feed.changed.wait()
        finally:
            feed.watchers -= 1
            if feed.watchers == 0:
                if self._feeds.get(job_id) is feed:
                    del self._feeds[job_id]
                if feed.task is not None:
                    feed.task.cancel()

    async def _produce(self, job_id: str, feed: _Feed[T]) -> None:
        version = 0
        try:
            while True:
                event = self._notifier.event(job_id)  # before the read: no change is lost
                value, final = await self._read(job_id)
                if feed.latest is None or value != feed.latest.value or final:
                    version += 1
                    feed.publish(Snapshot(version, value, final))
                if final:
                    return
                await self._notifier.wait(event, timeout=self._idle_s)
                await asyncio.sleep(self._settle_s)  # let a burst of changes settle
        except asyncio.CancelledError:
            raise
        except Exception as error:  # surfaced to every watcher, with its status
            feed.fail(error)

    async def close(self, error: BaseException) -> None:
        """Stop every reader; their watchers raise ``error``."""
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for feed in self._feeds.values():
            feed.fail(error)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
