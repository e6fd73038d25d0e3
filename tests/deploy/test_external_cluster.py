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

import time
from collections.abc import Iterator

import numpy as np
import pytest
from support.cluster import kill_matching
from support.entrypoints import LoopbackCluster, new_cluster

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


def test_a_job_survives_losing_the_second_node(cluster: LoopbackCluster) -> None:
    """A job runs on actors of both nodes; the second node dies mid-job (SIGKILL of
    every process of it); the job still completes with every result correct."""
    c = cluster
    _both_nodes(c)
    tasks = [
        {
            "id": f"t{k}",
            "function": FUNCTION,
            "inputs": {"x": {"sample": {"dist": "uniform", "low": -3, "high": 3,
                                        "shape": [WIDTH], "count": POINTS, "seed": k}}},
            "ops": ["grad"],
        }
        for k in range(4)
    ]  # fmt: skip
    with gradserve.Client(c.address, timeout=180) as client:
        job = client.submit({"name": "node-loss", "tasks": tasks})
        deadline = time.monotonic() + 120
        status = job.status()
        while status.points_done == 0 and not status.done and time.monotonic() < deadline:
            time.sleep(0.05)
            status = job.status()
        assert not status.done, f"the job ended before the node could be lost: {status}"
        worker = c.workers[0]
        assert kill_matching(str(worker.temp_dir)) >= 2  # ray start, raylet, its actors...
        final = job.wait(timeout=180)
        assert final.state == "succeeded", (final, c.logs())
        assert final.tasks_failed == 0 and final.points_done == final.points_total
        results = {r.task_id: r for r in job.results()}
    assert sorted(results) == [f"t{k}" for k in range(4)]
    for k in range(4):
        # the server draws samples with NumPy's default_rng(seed).uniform: redraw them here
        x = np.random.default_rng(k).uniform(-3, 3, size=(POINTS, WIDTH))
        np.testing.assert_allclose(
            results[f"t{k}"].outputs["grad"], expected_grad(x), rtol=1e-6, atol=1e-9
        )
    worker.proc.wait(timeout=30)  # the entrypoint notices its node is gone
    assert c.server is not None and c.server.alive()


def test_a_node_that_joins_gets_workers(cluster: LoopbackCluster) -> None:
    """`--scale worker=N` after start: without --num-workers the pool follows the
    cluster's CPUs, so a node that joins gets actors (here also the replacements of
    the node lost above, which waited in Ray for room)."""
    c = cluster
    node = c.start_worker(num_cpus=3)
    deadline = time.monotonic() + 120
    while True:
        placement = c.actor_placement()
        actors = placement["actors"]
        assert isinstance(actors, dict)
        on_new = sum(n for node_id, n in actors.items() if node_id != placement["head"])
        if on_new >= 3:
            break
        assert time.monotonic() < deadline, f"no workers on the new node: {placement}"
        time.sleep(1.0)
    assert node.alive()
    with gradserve.Client(c.address, timeout=120) as client:
        assert client.server_info().workers >= 5
        x = np.random.default_rng(3).uniform(-3, 3, size=(4000, WIDTH))
        result = client.compute(FUNCTION, {"x": x}, ["grad"], batched=True)
        np.testing.assert_allclose(result["grad"], expected_grad(x), rtol=1e-6, atol=1e-9)


def test_stops_cleanly_on_sigterm(cluster: LoopbackCluster) -> None:
    c = cluster
    assert c.server is not None
    started = time.monotonic()
    assert c.server.stop(timeout=90) == 0, c.logs()
    assert time.monotonic() - started < 60
    assert "gradserve: stopped" in c.server.output
    from support.cluster import processes_matching

    assert not processes_matching(str(c.server.temp_dir)), "Ray processes left behind"
