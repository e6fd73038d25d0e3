"""Prometheus metrics (``--metrics-port``): every name starts with ``gradserve_``.

Counters and histograms are updated as calls end (interceptor.py) and as chunks get
their worker (the pool's ``on_acquire``); gauges of the pool and the job store are
read when Prometheus scrapes, so they cost nothing between scrapes.
docs/operations.md lists them with a sample scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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

from gradserve_server.pool import ActorPool, tenant_of

log = logging.getLogger("gradserve.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="gradserve", registry=REGISTRY)  # CPU, memory, open files

# Calls last from milliseconds (a small grad) to minutes (a large check).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
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


def label(tenant: str) -> str:
    return tenant or "default"


def observe_acquire(key: str, waited: float) -> None:
    """The pool's hook: one chunk got a worker after ``waited`` seconds."""
    tenant = label(tenant_of(key))
    CHUNKS.labels(tenant).inc()
    QUEUE_WAIT.labels(tenant).observe(waited)


class _PoolCollector(Collector):
    def __init__(self, pool: ActorPool, jobs: Any) -> None:
        self.pool = pool
        self.jobs = jobs

    def collect(self) -> Iterator[Any]:
        pool = self.pool
        workers = GaugeMetricFamily(
            "gradserve_workers", "Workers of the pool by state", labels=["state"]
        )
        workers.add_metric(["alive"], len(pool.workers))
        workers.add_metric(["idle"], pool.idle)
        workers.add_metric(["starting"], pool.starting)
        yield workers
        yield CounterMetricFamily(
            "gradserve_workers_replaced", "Workers replaced after dying, timing out or being "
            "cancelled", value=pool.replaced,
        )  # fmt: skip
        depth = GaugeMetricFamily(
            "gradserve_queue_depth", "Chunks waiting for a worker, by tenant", labels=["tenant"]
        )
        for tenant, count in pool.waiting_by_tenant().items():
            depth.add_metric([label(tenant)], count)
        yield depth
        if self.jobs is not None:
            counts = GaugeMetricFamily("gradserve_jobs", "Jobs by state", labels=["state"])
            try:
                by_state = self.jobs.store.count_by_state()
            except Exception as error:  # the store closed while stopping: skip the gauge
                log.debug("job counts unavailable: %s", error)
                return
            for state in ("queued", "running", "succeeded", "failed", "cancelled"):
                counts.add_metric([state], by_state.get(state, 0))
            yield counts


def serve(host: str, port: int) -> int:
    """Serve /metrics on ``host:port`` (a thread); returns the port. Called before Ray
    starts, so a port in use fails at once; :func:`watch` adds the pool and jobs."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as error:
        raise OSError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from None
    return int(server.server_port)


def watch(pool: ActorPool, jobs: Any) -> None:
    """Report the pool's and the job store's state, and time the pool's waits."""
    REGISTRY.register(_PoolCollector(pool, jobs))
    pool.on_acquire = observe_acquire
