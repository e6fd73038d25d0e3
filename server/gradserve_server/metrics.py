"""Prometheus metrics (``--metrics-port``): every name starts with ``gradserve_``.

Counters and histograms are updated as calls end (interceptor.py) and as chunks get
their worker (the pool's ``on_acquire``). The scrape runs on prometheus_client's
HTTP thread: it reads the pool's gauges from a copy the event loop makes each
second (never the pool itself), and job counts from the store when Prometheus asks.
docs/operations.md lists them with a sample scrape.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gradserve.names import JOB_STATES
from gradserve_server.auth import tenant_label
from gradserve_server.pool import ActorPool, tenant_of

log = logging.getLogger("gradserve.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="gradserve", registry=REGISTRY)  # CPU, memory, open files

# Calls last from milliseconds (a small grad) to minutes (a large check).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# How often the pool's gauges are copied for scrapes (on the event loop).
FOLLOW_SECONDS = 1.0
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)

REQUESTS = Counter(
    "gradserve_requests", "Calls by RPC, op and final status", ["rpc", "op", "status"],
    registry=REGISTRY,
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "gradserve_request_duration_seconds", "Call latency by RPC, op and status",
    ["rpc", "op", "status"], buckets=_CALL_BUCKETS, registry=REGISTRY,
)  # fmt: skip
REQUEST_POINTS = Counter(
    "gradserve_request_points", "Points computed or checked by calls", ["rpc", "op"],
    registry=REGISTRY,
)  # fmt: skip
REQUEST_CHUNKS = Counter(
    "gradserve_request_chunks", "Chunks the calls were split into", ["rpc", "op"],
    registry=REGISTRY,
)  # fmt: skip
CHUNKS = Counter(
    "gradserve_chunks_dispatched", "Chunks given a worker (calls and jobs), by tenant",
    ["tenant"], registry=REGISTRY,
)  # fmt: skip
FAST_LANE_CALLS = Counter(
    "gradserve_fast_lane_calls",
    "Compute and check calls answered by the fast lane (no chunk), by tenant",
    ["tenant"], registry=REGISTRY,
)  # fmt: skip
QUEUE_WAIT = Histogram(
    "gradserve_queue_wait_seconds", "Time a chunk waited for a worker, by tenant", ["tenant"],
    buckets=_WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
RECEIVED_BYTES = Counter(
    "gradserve_received_bytes", "Request message bytes received, by RPC", ["rpc"],
    registry=REGISTRY,
)  # fmt: skip
SENT_BYTES = Counter(
    "gradserve_sent_bytes", "Reply message bytes sent, by RPC", ["rpc"], registry=REGISTRY
)
CHECK_VERDICTS = Counter(
    "gradserve_check_verdicts", "Check calls by verdict (passed, failed)", ["verdict"],
    registry=REGISTRY,
)  # fmt: skip
AUTH_FAILURES = Counter(
    "gradserve_auth_failures", "Calls refused for want of a valid token", registry=REGISTRY
)


def observe_acquire(key: str, waited: float) -> None:
    """The pool's hook: one chunk got a worker after ``waited`` seconds."""
    tenant = tenant_label(tenant_of(key))
    CHUNKS.labels(tenant).inc()
    QUEUE_WAIT.labels(tenant).observe(waited)


def observe_fast_lane(tenant: str) -> None:
    """The fast lane's hook: one call answered in the server's process."""
    FAST_LANE_CALLS.labels(tenant_label(tenant)).inc()


@dataclass(frozen=True)
class PoolState:
    """What a scrape reports of the pool: copied on the event loop, read by the scrape."""

    alive: int = 0
    idle: int = 0
    channel: int = 0  # alive workers reached by a direct channel (channel.py)
    starting: int = 0
    replaced: int = 0
    waiting: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, pool: ActorPool) -> PoolState:
        """Call on the event loop only: it reads the pool's own structures."""
        return cls(
            alive=len(pool.workers),
            idle=pool.idle,
            channel=sum(1 for w in pool.workers if w.open_channel is not None),
            starting=pool.starting,
            replaced=pool.replaced,
            waiting=tuple(pool.waiting_by_tenant().items()),
        )


class _PoolCollector(Collector):
    """Runs on prometheus_client's HTTP thread: it reads only ``state`` (replaced whole
    by the event loop, see :func:`_follow`) and the job store (which has its own lock),
    never the pool, whose structures the event loop changes as it reads them."""

    def __init__(self, jobs: Any) -> None:
        self.jobs = jobs
        self.state = PoolState()

    def collect(self) -> Iterator[Any]:
        state = self.state
        workers = GaugeMetricFamily(
            "gradserve_workers", "Workers of the pool by state", labels=["state"]
        )
        workers.add_metric(["alive"], state.alive)
        workers.add_metric(["idle"], state.idle)
        workers.add_metric(["starting"], state.starting)
        workers.add_metric(["channel"], state.channel)
        yield workers
        yield CounterMetricFamily(
            "gradserve_workers_replaced", "Workers replaced after dying, timing out or being "
            "cancelled", value=state.replaced,
        )  # fmt: skip
        depth = GaugeMetricFamily(
            "gradserve_queue_depth", "Chunks waiting for a worker, by tenant", labels=["tenant"]
        )
        for tenant, count in state.waiting:
            depth.add_metric([tenant_label(tenant)], count)
        yield depth
        if self.jobs is not None:
            counts = GaugeMetricFamily("gradserve_jobs", "Jobs by state", labels=["state"])
            try:
                by_state = self.jobs.store.count_by_state()
            except sqlite3.ProgrammingError as error:  # closed while stopping: skip the gauge
                log.debug("job counts unavailable: %s", error)
                return
            for state_name in JOB_STATES:
                counts.add_metric([state_name], by_state.get(state_name, 0))
            yield counts


async def _follow(pool: ActorPool, collector: _PoolCollector, every_s: float) -> None:
    while True:
        collector.state = PoolState.of(pool)
        await asyncio.sleep(every_s)


class Endpoint:
    """The /metrics endpoint of one server: an HTTP thread, and the pool and job
    gauges it reports once :meth:`watch` is called. :meth:`close` ends both, so a
    second server in the same process starts clean."""

    def __init__(self, host: str, port: int) -> None:
        """Serve /metrics on ``host:port``. Called before Ray starts, so a port in use
        fails at once."""
        try:
            self._http, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as error:
            raise OSError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from None
        self.port = int(self._http.server_port)
        self._collector: _PoolCollector | None = None
        self._follower: asyncio.Task[None] | None = None

    def watch(self, pool: ActorPool, jobs: Any, every_s: float = FOLLOW_SECONDS) -> None:
        """Report the pool's and the job store's state, and time the pool's waits
        (call on the event loop)."""
        self._collector = _PoolCollector(jobs)
        self._collector.state = PoolState.of(pool)
        REGISTRY.register(self._collector)
        self._follower = asyncio.ensure_future(_follow(pool, self._collector, every_s))
        pool.on_acquire = observe_acquire

    def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
