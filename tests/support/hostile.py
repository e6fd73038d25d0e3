"""What every hostile-load test measures: the status, the time, the server's RSS before
and after, and that a small call is answered within a second meanwhile.

    with Watch(server) as watch:
        code, details, seconds = stream_call(stub, parts)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and seconds < 3
    watch.check()              # probe answered < 1 s; RSS back within 200 MB

Sizes scale with GRADSERVE_HOSTILE_SCALE (1 in `make test`, larger in
`make test-hostile`): :func:`scaled` picks between a small and a full size.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import grpc
import psutil

import gradserve
from support.cluster import ServerProcess

# "full": the attacks at their full sizes (make test-hostile); anything else: sizes that fit
# `make test`
FULL = os.environ.get("GRADSERVE_HOSTILE_SCALE", "small") == "full"
RSS_TOLERANCE = 200 * 1024 * 1024
PROBE_LIMIT_S = 1.0


def scaled(small: int, full: int) -> int:
    return full if FULL else small


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


class Watch:
    """A probe calling ``value("x * 2.0", [1.0])`` every 0.1 s while the block runs, and
    the server's RSS when it started; :meth:`check` asserts both afterwards.

    ``probe="info"`` asks for the server's info instead: the event loop alone, for a
    block that keeps the workers busy on purpose (their fairness is another test's).
    """

    def __init__(self, server: ServerProcess, probe: bool | str = True) -> None:
        self.server = server
        self.probe = probe
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_before = 0
        self.peak = 0

    def __enter__(self) -> Watch:
        self.rss_before = rss(self.server)
        self.peak = self.rss_before
        if self.probe:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
            time.sleep(0.2)  # a first answer before the hostile call
        return self

    def _run(self) -> None:
        with gradserve.Client(self.server.address, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if self.probe == "info":
                        client.server_info()
                    else:
                        client.value("x * 2.0", [1.0])
                except gradserve.GradserveError as exc:  # pragma: no cover - the failure shown
                    self.errors.append(exc)
                self.latencies.append(time.monotonic() - started)
                self.peak = max(self.peak, rss(self.server))
                self._stop.wait(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def check(self, settle_s: float = 10.0) -> None:
        """The probe was answered within a second every time, and the server's RSS
        came back within 200 MB of where it was (allowing ``settle_s`` to free it)."""
        assert not self.errors, self.errors[:3]
        if self.probe:
            assert self.latencies, "the probe never ran"
            assert max(self.latencies) < PROBE_LIMIT_S, sorted(self.latencies)[-5:]
        deadline = time.monotonic() + settle_s
        while rss(self.server) - self.rss_before > RSS_TOLERANCE and time.monotonic() < deadline:
            time.sleep(0.5)
        grown = rss(self.server) - self.rss_before
        assert grown <= RSS_TOLERANCE, f"server RSS grew by {grown / 1e6:.0f} MB"


def stream_call(
    stub: Any, parts: Iterable[Any], timeout: float = 60
) -> tuple[grpc.StatusCode, str, float]:
    """A ComputeStream sent raw: (status, details, seconds); OK if it succeeded."""
    started = time.monotonic()
    try:
        for _ in stub.ComputeStream(iter(parts), timeout=timeout):
            pass
    except grpc.RpcError as error:
        return error.code(), str(error.details()), time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


def unary_call(fn: Any, request: Any, timeout: float = 60) -> tuple[grpc.StatusCode, str, float]:
    """A unary call sent raw: (status, details, seconds)."""
    started = time.monotonic()
    try:
        fn(request, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), str(error.details()), time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started
