"""The actor pool: which actors exist, which are idle, who waits for one.

All of the pool's state lives here. Waiters are served round-robin at two
levels: first by tenant (the caller's identity, see auth.py), then within a
tenant by stream (one unary call, one job). The key a caller waits under is
``"TENANT/STREAM"`` (:func:`pool_key`). So a job with thousands of chunks cannot
starve a call that arrives after it, and one tenant with many jobs or calls gets
no more turns than another with one. An actor that died or was killed is
replaced, never handed out again.

Express lane: besides the regular workers the pool may hold a few express actors
(``--express-workers``). When every regular worker is busy, a caller (one key) with a
single chunk in flight (a small call) runs on an idle express actor, which stops any call
after ``--express-seconds`` (cooperatively, between operations) and reports an
overrun; the chunk then queues for a regular worker like any other, and that caller
does not try the express lane again. So calls that are cheap are answered while
expensive ones hold every regular worker, whatever the cost estimate said, and an
expensive call loses at most the express budget.

Reclaiming: a chunk whose caller went away, or that ran past its timeout, is
cancelled through Ray (the worker's language runtime checks the flag between
operations); the worker goes back to the pool once a probe call, queued behind the
cancelled one, answers. Only a worker that does not answer within the grace period
is killed and replaced (a process costs seconds to start and warm).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradserve_server.channel import Channel, ChannelCall

log = logging.getLogger("gradserve.pool")

# A replacement actor that fails to start is tried again after this long.
REPLACE_RETRY_SECONDS = 5.0
# Tenants remembered as too big for the express lane.
OVERRAN_MEMORY = 4096
# How long opening a worker's direct channel may take before it stays on Ray alone.
CHANNEL_OPEN_SECONDS = 10.0


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
    express: bool = False
    # the direct channel to an actor on the server's host (channel.py); None: Ray only
    channel: Channel | None = None

    @property
    def open_channel(self) -> Channel | None:
        """The worker's channel while it is open; None: its calls go by Ray."""
        channel = self.channel
        return channel if channel is not None and not channel.closed else None


class ActorPool:
    def __init__(
        self,
        make_actor: Callable[[], Any],
        size: int,
        make_express: Callable[[], Any] | None = None,
        *,
        express: int = 0,
        express_seconds: float = 0.5,
        cancel_grace: float = 2.0,
        channels: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("ActorPool: size must be at least 1")
        self._make_actor = make_actor
        self._make_express = make_express
        self._numbers = itertools.count()
        self._workers: list[Worker] = []
        self._idle: deque[Worker] = deque()
        # tenant -> stream -> futures; both levels in turn order
        self._waiters: OrderedDict[str, Waiters] = OrderedDict()
        self.size = size
        self.express_size = express if make_express is not None else 0
        self.express_seconds = express_seconds
        self.cancel_grace = cancel_grace
        # open a direct channel to each actor on this host (see Worker.channel)
        self.channels = channels
        self._express: list[Worker] = []
        self._express_idle: deque[Worker] = deque()
        # chunks of each tenant in run_chunk, and tenants that overran the express lane
        self._active: Counter[str] = Counter()
        self._overran: OrderedDict[str, None] = OrderedDict()
        self.replaced = 0
        self.reclaimed = 0
        self._starting: set[asyncio.Task[None]] = set()
        # called with (key, seconds waited) as each chunk gets its worker (metrics)
        self.on_acquire: Callable[[str, float], None] | None = None
        self._reclaiming: set[asyncio.Task[None]] = set()

    def _spawn(self, express: bool = False) -> Worker:
        make = self._make_express if express else self._make_actor
        assert make is not None
        worker = Worker(make(), next(self._numbers), express=express)
        (self._express if express else self._workers).append(worker)
        return worker

    async def start(self, timeout: float = 120.0) -> None:
        """Create the actors and wait until each answers (torch imported, warm)."""
        for _ in range(self.size):
            self._spawn()
        for _ in range(self.express_size):
            self._spawn(express=True)
        everyone = self._workers + self._express
        infos = await asyncio.wait_for(
            asyncio.gather(*(w.handle.info.remote() for w in everyone)), timeout
        )
        for worker, info in zip(everyone, infos, strict=True):
            worker.name = info["name"]
        await asyncio.gather(*(self._connect(w) for w in everyone))
        for worker in everyone:
            (self._express_idle if worker.express else self._idle).append(worker)

    async def _connect(self, worker: Worker) -> None:
        """Open ``worker``'s direct channel when channels are on and the actor is on
        this host; any failure leaves it on Ray's actor calls alone."""
        if not self.channels:
            return
        try:
            async with asyncio.timeout(CHANNEL_OPEN_SECONDS):
                where = await worker.handle.channel.remote()
                if where is None or where["node"] != socket.gethostname():
                    return
                worker.channel = await Channel.open(where["address"], where["token"])
        except Exception as error:
            log.warning(
                "worker %s (%s): no direct channel, its calls go through Ray: %r",
                worker.number, worker.name, error,
            )  # fmt: skip

    @property
    def workers(self) -> list[Worker]:
        return [w for w in self._workers if not w.retired]

    @property
    def express_workers(self) -> list[Worker]:
        return [w for w in self._express if not w.retired]

    # ------------------------------------------------------------- express lane

    def enter(self, key: str) -> None:
        """A chunk waiting under ``key`` (see :func:`pool_key`) starts (see
        :func:`dispatch.run_chunk`)."""
        self._active[key] += 1

    def leave(self, key: str) -> None:
        self._active[key] -= 1
        if self._active[key] <= 0:
            del self._active[key]

    def overran(self, key: str) -> None:
        """``key`` ran past the express budget: it waits for regular workers now."""
        self._overran[key] = None
        while len(self._overran) > OVERRAN_MEMORY:
            self._overran.popitem(last=False)

    def express_for(self, key: str) -> Worker | None:
        """An idle express actor, if ``key`` should take one: every regular worker
        is taken, this is the key's only chunk, and it never overran."""
        if not self._express_idle or (self._idle and not self._waiters):
            return None
        if self._active.get(key, 0) > 1 or key in self._overran:
            return None
        return self._express_idle.popleft()

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
        if worker.express:
            self._express_idle.append(worker)
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
        if worker.channel is not None:
            worker.channel.close()
        log.warning("replacing worker %s (%s): %s", worker.number, worker.name, reason)
        try:
            import ray

            ray.kill(worker.handle, no_restart=True)
        except Exception as error:  # already gone is fine
            log.debug("kill of worker %s: %s", worker.number, error)
        (self._express if worker.express else self._workers).remove(worker)
        self._replace(express=worker.express)

    def reclaim(self, worker: Worker, ref: Any, reason: str) -> None:
        """Stop the chunk ``ref`` cooperatively; give ``worker`` back once it answers a
        probe queued behind it, or retire it if it does not within the grace period."""
        try:
            if isinstance(ref, ChannelCall):
                ref.cancel()
            else:
                import ray

                ray.cancel(ref)
        except Exception as error:  # finished, or not a Ray ref: the probe decides
            log.debug("cancel on worker %s: %s", worker.number, error)
        task = asyncio.get_running_loop().create_task(self._reclaim(worker, ref, reason))
        self._reclaiming.add(task)
        task.add_done_callback(self._reclaiming.discard)

    async def _reclaim(self, worker: Worker, ref: Any, reason: str) -> None:
        grace = self.cancel_grace
        try:
            async with asyncio.timeout(grace):
                # the cancelled call's own outcome first (unread, Ray would log it)
                with contextlib.suppress(Exception):
                    await ref
                await worker.handle.info.remote()
        except Exception as error:  # no answer in time, or it died: a fresh one
            self.retire(worker, f"{reason}; no answer {grace:g} s after cancelling: {error!r}")
            return
        self.reclaimed += 1
        log.info("worker %s stopped cooperatively (%s)", worker.number, reason)
        self.release(worker)

    def grow(self, target: int) -> int:
        """Start actors until the pool holds ``target`` (counting those still starting,
        e.g. replacements waiting for room); returns how many were started."""
        missing = target - len(self._workers)
        for _ in range(missing):
            self._replace()
        self.size = max(self.size, target)
        return max(0, missing)

    def _replace(self, express: bool = False) -> None:
        """A fresh actor in a retired one's place, handed out once it answers.

        After a node is lost the cluster may have no room for the new actor until
        another node joins: it stays pending in Ray, and the pool runs smaller
        meanwhile instead of giving chunks to an actor that cannot run them.
        """
        fresh = self._spawn(express)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): hand it out now
            self.release(fresh)
            return
        task = loop.create_task(self._when_ready(fresh))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    @property
    def reclaiming(self) -> int:
        """Workers being stopped cooperatively, not yet back in the pool."""
        return len(self._reclaiming)

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
            group = self._express if worker.express else self._workers
            if worker in group:
                group.remove(worker)
            await asyncio.sleep(REPLACE_RETRY_SECONDS)
            self._replace(worker.express)
            return
        worker.name = info["name"]
        await self._connect(worker)
        log.info("replacement worker %s (%s) is ready", worker.number, worker.name)
        self.release(worker)
