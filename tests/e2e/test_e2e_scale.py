"""A million points through the streaming path, split over every actor, with the
server's memory bounded (measured by polling its RSS)."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
from support.cluster import ServerProcess

import gradserve

FN = "sum(x ** 3) / 3 + sum(sin(x))"  # grad = x**2 + cos(x)


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_million_point_batched_grad(client: gradserve.Client, server: ServerProcess) -> None:
    x = np.random.default_rng(0).normal(size=(1_000_000, 10))
    started = time.perf_counter()
    with PeakRSS(server.proc.pid) as rss:
        result = client.compute(FN, {"x": x}, ["grad"], batched=True, timeout=300)
    elapsed = time.perf_counter() - started
    np.testing.assert_allclose(result["grad"], x**2 + np.cos(x), rtol=1e-12)
    meta = result.metadata
    assert meta.points == 1_000_000
    assert meta.workers == 2 and meta.chunks >= 2
    grown = (rss.peak - rss.baseline) / 2**20
    print(
        f"\n1e6 x 10 grad: {elapsed:.2f} s, {meta.chunks} chunks on {meta.workers} workers, "
        f"server RSS {rss.baseline / 2**20:.0f} MiB -> peak {rss.peak / 2**20:.0f} MiB "
        f"(+{grown:.0f} MiB for 80 MB in, 80 MB out)"
    )
    # input and output are 80 MB each; the server may hold a few copies, not dozens
    assert grown < 1200


def test_a_reply_over_the_message_limit_comes_back_through_the_stream(
    client: gradserve.Client,
) -> None:
    # a 12 KB request whose 18 MB Hessian is over the server's 16 MiB message limit:
    # the unary reply is refused with a retry hint, and the SDK retries by streaming
    x = np.random.default_rng(1).normal(size=1500)
    h = client.hessian("sum(x ** 3)", {"x": x}, timeout=300)
    assert h.shape == (1500, 1500)
    np.testing.assert_allclose(np.diag(h), 6 * x, rtol=1e-12)
    assert np.count_nonzero(h - np.diag(np.diag(h))) == 0
