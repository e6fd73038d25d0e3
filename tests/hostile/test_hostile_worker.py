"""Hostile load on the workers, end to end: the hostile server's low per-call budgets
(conftest.py: 300 MiB, 2 s), its worker processes watched.

- memory: a derivative whose saved tensors grow past the per-call memory budget is
  refused, named, and its worker's memory is back where it was;
- CPU time: calls that would run for minutes stop at the per-call budget, and a small
  call is answered within a second while they hold every regular worker;
- short deadlines: calls whose caller gives up are cancelled in the worker, which
  lives on: no process is killed or restarted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil
import pytest
from support.cluster import RayNode, ServerProcess

import gradserve

MIB = 2**20
SECONDS_BUDGET = 2  # conftest.py's --max-call-seconds
X = {"x": np.ones(3)}

# ~75 MB of saved tensors per iteration under grad; the loop limit would allow 40
GRAD_LOOP = """def f(x):
    y = ones(10000000) * x[0]
    for i in range(40):
        y = sin(y)
    return sum(y)"""

# minutes of eigvalsh inside every static limit
HEAVY = """def f(x):
    A = ones((300, 300)) * x[0] + 300 * eye(300)
    s = 0.0
    for i in range(10000):
        s = s + sum(eigvalsh(A))
    return s"""


def actor_processes(ray: RayNode) -> dict[int, psutil.Process]:
    """The worker actors on ``ray``'s node: forked by its raylet, whose command line
    names the node's temp dir (other clusters on the machine have their own)."""
    found = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        text = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
        if "GradActor" not in text:
            continue
        try:
            parent = proc.parent()
            if parent is not None and ray.temp_dir in " ".join(parent.cmdline()):
                found[proc.pid] = proc
        except psutil.Error:
            continue
    return found


@dataclass
class Workers:
    """The worker actors on the session's Ray node (the hostile server's, and the
    session server's if it runs: idle meanwhile)."""

    process: ServerProcess
    actors: dict[int, psutil.Process]

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.actors.values() if p.is_running())

    def all_alive(self) -> bool:
        return all(p.is_running() for p in self.actors.values())

    def count(self, text: str) -> int:
        return self.process.output.count(text)


@pytest.fixture
def workers(hostile_server: ServerProcess, ray_head: RayNode) -> Workers:
    actors = actor_processes(ray_head)
    assert len(actors) >= 3, "two workers and one express actor"
    return Workers(hostile_server, actors)


def small_call_seconds(client: gradserve.Client) -> float:
    started = time.monotonic()
    out = np.asarray(client.value("sum(x * x)", X, timeout=30))
    assert out.size == 1 and float(out.reshape(-1)[0]) == 3.0, out
    return time.monotonic() - started


def test_memory_budget_refuses_saved_tensors_and_gives_the_memory_back(
    workers: Workers, hostile_client: gradserve.Client
) -> None:
    small_call_seconds(hostile_client)  # warm
    before = workers.rss()
    started = time.monotonic()
    with pytest.raises(gradserve.ResourceExhaustedError) as info:
        hostile_client.grad(GRAD_LOOP, X, timeout=60)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "max_call_bytes" in message and "300 MiB" in message, message
    assert "sin(y)" in message and "line 4" in message, message
    assert elapsed < 10, elapsed
    assert small_call_seconds(hostile_client) < 1.0
    grown = workers.rss() - before
    assert grown < 100 * MIB, f"the workers hold {grown / MIB:.0f} MiB more than before"


def test_cpu_budget_stops_expensive_calls_while_small_ones_are_answered(
    workers: Workers, hostile_client: gradserve.Client
) -> None:
    outcomes: list[tuple[str, float]] = []

    def heavy() -> None:
        started = time.monotonic()
        with gradserve.Client(workers.process.address, timeout=60) as c:
            try:
                c.value(HEAVY, X, timeout=60)
                outcomes.append(("finished", time.monotonic() - started))
            except gradserve.GradserveError as err:
                outcomes.append((str(err), time.monotonic() - started))

    before = workers.rss()
    replaced = workers.count("replacing worker")
    threads = [threading.Thread(target=heavy) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.8)  # both regular workers are busy now
    latencies = [small_call_seconds(hostile_client) for _ in range(5)]
    for thread in threads:
        thread.join(60)
    assert max(latencies) < 1.0, latencies
    assert len(outcomes) == 2
    for message, seconds in outcomes:
        assert "max_call_seconds" in message and f"{SECONDS_BUDGET} s" in message, message
        assert "line" in message, message
        assert seconds < SECONDS_BUDGET + 4, seconds
    assert workers.all_alive() and workers.count("replacing worker") == replaced
    assert workers.rss() - before < 100 * MIB


def test_short_deadlines_cancel_in_the_worker_without_killing_it(
    workers: Workers, hostile_client: gradserve.Client
) -> None:
    replaced = workers.count("replacing worker")
    stopped = workers.count("stopped cooperatively")
    started = time.monotonic()
    for _ in range(8):
        with pytest.raises(gradserve.DeadlineExceededError):
            hostile_client.value(HEAVY, X, timeout=0.3)
    assert time.monotonic() - started < 8
    assert small_call_seconds(hostile_client) < 1.0, workers.process.output[-4000:]
    # a cancelled call stops within an operation: the workers are free again at once
    time.sleep(0.5)
    assert max(small_call_seconds(hostile_client) for _ in range(3)) < 1.0
    assert workers.all_alive() and workers.count("replacing worker") == replaced
    assert workers.count("stopped cooperatively") >= stopped + 4, workers.process.output[-3000:]
