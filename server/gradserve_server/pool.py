"""The actor pool: which actors exist, which are idle, who waits for one.

All of the pool's state lives here. Waiters are served round-robin at two
levels: first by tenant (the caller's identity, see auth.py), then within a
tenant by stream (one unary call, one job). The key a caller waits under is
``"TENANT/STREAM"`` (:func:`pool_key`). So a job with thousands of chunks cannot
starve a call that arrives after it, and one tenant with many jobs or calls gets
no more turns than another with one. An actor that died or was killed is
replaced, never handed out again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gradserve.pool")

# A replacement actor that fails to start is tried again after this long.
REPLACE_RETRY_SECONDS = 5.0


Waiters = OrderedDict[str, deque[asyncio.Future["Worker"]]]


def pool_key(tenant: str, stream: str) -> str:
    """The key a chunk waits under: its tenant's turn first, then its stream's."""
    return f"{tenant}/{stream}"


def tenant_of(key: str) -> str:
    return key.partition("/")[0]


@dataclass(eq=False)
class Worker:
    """One actor handle and what the pool knows about it."""

    handle: Any
    number: int
    name: str = ""
    retired: bool = False


class ActorPool:
    def __init__(self, make_actor: Callable[[], Any], size: int) -> None:
        if size < 1:
            raise ValueError("ActorPool: size must be at least 1")
        self._make_actor = make_actor
        self._numbers = itertools.count()
        self._workers: list[Worker] = []
        self._idle: deque[Worker] = deque()
        # tenant -> stream -> futures; both levels in turn order
        self._waiters: OrderedDict[str, Waiters] = OrderedDict()
        self.size = size
        self.replaced = 0
        self._starting: set[asyncio.Task[None]] = set()
        # called with (key, seconds waited) as each chunk gets its worker (metrics)
        self.on_acquire: Callable[[str, float], None] | None = None

    def _spawn(self) -> Worker:
        worker = Worker(self._make_actor(), next(self._numbers))
        self._workers.append(worker)
        return worker

    async def start(self, timeout: float = 120.0) -> None:
        """Create the actors and wait until each answers (torch imported, warm)."""
        for _ in range(self.size):
            self._spawn()
        infos = await asyncio.wait_for(
            asyncio.gather(*(w.handle.info.remote() for w in self._workers)), timeout
        )
        for worker, info in zip(self._workers, infos, strict=True):
            worker.name = info["name"]
            self._idle.append(worker)

    @property
    def workers(self) -> list[Worker]:
        return [w for w in self._workers if not w.retired]

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(len(q) for streams in self._waiters.values() for q in streams.values())

    def waiting_by_tenant(self) -> dict[str, int]:
        return {
            tenant: sum(len(q) for q in streams.values())
            for tenant, streams in self._waiters.items()
        }

    async def acquire(self, key: str) -> Worker:
        """An idle worker; waits its turn (see :func:`pool_key`) when none is idle."""
        if self._idle and not self._waiters:
            self._acquired(key, 0.0)
            return self._idle.popleft()
        started = time.monotonic()
        future: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        tenant, _, stream = key.partition("/")
        self._waiters.setdefault(tenant, OrderedDict()).setdefault(stream, deque()).append(future)
        try:
            worker = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # handed over just as we were cancelled
            else:
                self._forget(tenant, stream, future)
            raise
        self._acquired(key, time.monotonic() - started)
        return worker

    def _acquired(self, key: str, waited: float) -> None:
        if self.on_acquire is not None:
            self.on_acquire(key, waited)

    def _forget(self, tenant: str, stream: str, future: asyncio.Future[Worker]) -> None:
        streams = self._waiters.get(tenant)
        queue = streams.get(stream) if streams is not None else None
        if streams is not None and queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del streams[stream]
            if not streams:
                del self._waiters[tenant]

    def _next_waiter(self) -> asyncio.Future[Worker]:
        """Pop the next waiter in turn; its stream and tenant go to the back of their rounds."""
        tenant, streams = self._waiters.popitem(last=False)
        stream, queue = streams.popitem(last=False)
        future = queue.popleft()
        if queue:
            streams[stream] = queue
        if streams:
            self._waiters[tenant] = streams
        return future

    def release(self, worker: Worker) -> None:
        """Give a healthy worker back: to the next tenant in turn, or to the idle set."""
        if worker.retired:
            return
        while self._waiters:
            future = self._next_waiter()
            if not future.done():
                future.set_result(worker)
                return
        self._idle.append(worker)

    def retire(self, worker: Worker, reason: str) -> None:
        """Kill a worker that died or ran away, and put a fresh one in its place."""
        if worker.retired:
            return
        worker.retired = True
        self.replaced += 1
        log.warning("replacing worker %s (%s): %s", worker.number, worker.name, reason)
        try:
            import ray

            ray.kill(worker.handle, no_restart=True)
        except Exception as error:  # already gone is fine
            log.debug("kill of worker %s: %s", worker.number, error)
        self._workers.remove(worker)
        self._replace()

    def grow(self, target: int) -> int:
        """Start actors until the pool holds ``target`` (counting those still starting,
        e.g. replacements waiting for room); returns how many were started."""
        missing = target - len(self._workers)
        for _ in range(missing):
            self._replace()
        self.size = max(self.size, target)
        return max(0, missing)

    def _replace(self) -> None:
        """A fresh actor in a retired one's place, handed out once it answers.

        After a node is lost the cluster may have no room for the new actor until
        another node joins: it stays pending in Ray, and the pool runs smaller
        meanwhile instead of giving chunks to an actor that cannot run them.
        """
        fresh = self._spawn()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): hand it out now
            self.release(fresh)
            return
        task = loop.create_task(self._when_ready(fresh))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    @property
    def starting(self) -> int:
        """Replacement actors not yet ready (e.g. waiting for a node with room)."""
        return len(self._starting)

    async def _when_ready(self, worker: Worker) -> None:
        try:
            info = await worker.handle.info.remote()
        except Exception as error:  # it died while starting: try again shortly
            log.warning("replacement worker %s did not start: %s", worker.number, error)
            worker.retired = True
            if worker in self._workers:
                self._workers.remove(worker)
            await asyncio.sleep(REPLACE_RETRY_SECONDS)
            self._replace()
            return
        worker.name = info["name"]
        log.info("replacement worker %s (%s) is ready", worker.number, worker.name)
        self.release(worker)
