"""External-cluster mode, with the deployment's own entrypoints and no Docker.

docker/server-entrypoint.sh starts a Ray head and `gradserve serve --ray-address`
against it; docker/worker-entrypoint.sh joins a second Ray node, as the compose
`worker` service does. Both run on loopback with their own temp dirs and share
Ray's auth token through a token file, as the containers share it through a
volume. Work must run on actors of both nodes; then the second node is killed
(SIGKILL, every process of it) while work is in flight, and every result must
still come back correct: the dispatcher retries the chunks of dead workers and
the pool replaces dead actors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from support.entrypoints import LoopbackCluster, kill_matching, new_cluster

import gradserve

pytestmark = pytest.mark.timeout(240)

# ~0.5-1 s of compute per call on 2 cores: long enough to lose a node in the middle
FUNCTION = """
def f(x):
    s = 0 * x
    for i in range(TERMS):
        s = s + sin(x + i)
    return sum(s)
""".replace("TERMS", "60")
POINTS, WIDTH = 20_000, 25


def expected_grad(x: np.ndarray) -> np.ndarray:
    return sum(np.cos(x + i) for i in range(60))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    c = new_cluster()
    try:
        c.start_server(num_cpus=2, wait_for_nodes=2)
        c.start_worker(num_cpus=2)
        c.wait_serving()
        yield c
    finally:
        c.stop()


def _both_nodes(c: LoopbackCluster) -> dict[str, object]:
    placement = c.actor_placement()
    actors = placement["actors"]
    assert isinstance(actors, dict)
    assert len(placement["nodes"]) == 2, placement  # type: ignore[arg-type]
    assert placement["head"] in actors, f"no actor on the head: {placement}"
    assert len(actors) == 2, f"actors on one node only: {placement}"
    return placement


def test_serves_through_the_entrypoints_with_actors_on_both_nodes(cluster: LoopbackCluster) -> None:
    c = cluster
    with gradserve.Client(c.address, timeout=120) as client:
        info = client.server_info()
        assert info.workers == 4  # one per CPU of both nodes
        assert info.ray_address == c.ray_address
        grad = client.grad("2 * dot(x, x)", {"x": [0.0, 1.0, 2.0, 3.0]})
        np.testing.assert_allclose(grad, [0.0, 4.0, 8.0, 12.0])
    assert c.token_file.read_text().strip(), "the head shares Ray's token through the file"
    _both_nodes(c)


def test_work_survives_losing_the_second_node(cluster: LoopbackCluster) -> None:
    c = cluster
    rng = np.random.default_rng(7)
    batches = [rng.uniform(-3, 3, size=(POINTS, WIDTH)) for _ in range(3)]
    _both_nodes(c)
    done: list[tuple[float, float, bool]] = []  # start, end, correct
    failures: list[BaseException] = []
    stop = threading.Event()

    def workload() -> None:
        with gradserve.Client(c.address, timeout=180) as client:
            i = 0
            while not stop.is_set() or i < 2:
                x = batches[i % len(batches)]
                started = time.monotonic()
                try:
                    result = client.compute(FUNCTION, {"x": x}, ops=["grad"], batched=True)
                except BaseException as error:
                    failures.append(error)
                    return
                ok = bool(np.allclose(result["grad"], expected_grad(x), rtol=1e-6, atol=1e-9))
                done.append((started, time.monotonic(), ok))
                i += 1

    thread = threading.Thread(target=workload, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not done and not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done, f"no call finished before the kill: {failures}\n{c.logs()}"
    time.sleep(min(done[0][1] - done[0][0], 2.0) / 2)  # into the middle of a call

    worker = c.workers[0]
    killed_at = time.monotonic()
    assert kill_matching(str(worker.temp_dir)) >= 2  # ray start, raylet, its actors...
    # calls keep succeeding after the loss: wait for two that began after it
    deadline = time.monotonic() + 120
    while (
        not failures
        and sum(1 for start, _, _ in done if start > killed_at) < 2
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=180)
    assert not failures, f"a call failed after the node loss: {failures!r}\n{c.logs()}"
    assert all(ok for _, _, ok in done), done
    overlapped = [d for d in done if d[0] < killed_at < d[1]]
    assert overlapped, f"no call was in flight when the node died: {done} {killed_at}"
    assert sum(1 for start, _, _ in done if start > killed_at) >= 2
    worker.proc.wait(timeout=30)  # the entrypoint notices its node is gone
    assert c.server is not None and c.server.alive()


def test_stops_cleanly_on_sigterm(cluster: LoopbackCluster) -> None:
    c = cluster
    assert c.server is not None
    started = time.monotonic()
    assert c.server.stop(timeout=90) == 0, c.logs()
    assert time.monotonic() - started < 60
    assert "gradserve: stopped" in c.server.output
    from support.entrypoints import processes_matching

    assert not processes_matching(str(c.server.temp_dir)), "Ray processes left behind"
