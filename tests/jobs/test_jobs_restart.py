"""Durability: a server killed with SIGKILL mid-job resumes it on restart, keeping the
chunks it had stored and delivering every task's results exactly once."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
from support.cluster import RayNode, ServerProcess, start_server

import gradserve

# Data-dependent control flow: one point at a time, about a millisecond each, so the
# job below takes several seconds. The gradient is 2x where sum(x) > 0, else cos(x).
SLOW = """def f(x):
    if sum(x) > 0:
        return sum(x * x)
    else:
        return sum(sin(x))
"""
TASKS, POINTS = 4, 2048
JOB = {
    "name": "restart",
    "tasks": [
        {
            "id": f"t{i}",
            "function": SLOW,
            "ops": ["grad"],
            "inputs": {
                "x": {"sample": {"dist": "normal", "shape": [3], "count": POINTS, "seed": 100 + i}}
            },
        }
        for i in range(TASKS)
    ],
}


def _chunks(data_dir: Path, job_id: str) -> dict[tuple[int, int], tuple[str, int, list[str]]]:
    """(task, chunk) -> (state, executions, result files), read straight from the store."""
    db = sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT task_idx, chunk_idx, state, executions, files FROM chunks WHERE job_id = ?",
            (job_id,),
        ).fetchall()
    finally:
        db.close()
    return {
        (t, c): (state, execs, [f["file"] for f in json.loads(files or "[]")])
        for t, c, state, execs, files in rows
    }


def test_sigkill_mid_job_then_restart_resumes_without_recomputing(
    ray_head: RayNode, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    servers: list[ServerProcess] = [start_server(ray_head, data_dir=str(data_dir))]
    try:
        with gradserve.Client(servers[0].address, timeout=60) as client:
            job = client.submit(
                JOB,
                idempotency_key="restart-test",
            )
            deadline = time.monotonic() + 120
            while True:
                status = job.status()
                if status.points_done > 0:
                    break
                assert time.monotonic() < deadline, "no chunk was stored in time"
                time.sleep(0.05)
        assert status.points_done < status.points_total, "the job finished before the kill"
        servers[0].kill(signal.SIGKILL)

        before = _chunks(data_dir, job.id)
        stored = {k: v for k, v in before.items() if v[0] == "done"}
        assert stored and len(stored) < len(before)
        print(f"stored before the kill: {len(stored)} of {len(before)} chunks")
        mtimes = {
            (k, name): (data_dir / "results" / job.id / f"t{k[0]:06d}" / name).stat().st_mtime_ns
            for k, (_, _, names) in stored.items()
            for name in names
        }

        servers.append(start_server(ray_head, data_dir=str(data_dir)))
        with gradserve.Client(servers[1].address, timeout=60) as client:
            # the key still names the same job after the restart
            same = client.submit(
                JOB,
                idempotency_key="restart-test",
            )
            assert same.id == job.id
            final = client.job(job.id).wait(timeout=180)
            assert final.state == "succeeded", final
            assert (final.tasks_done, final.tasks_failed) == (TASKS, 0)
            assert final.points_done == final.points_total == TASKS * POINTS
            results = list(client.job(job.id).results())

        assert [r.task_id for r in results] == [f"t{i}" for i in range(TASKS)]
        for i, result in enumerate(results):
            x = np.random.default_rng(100 + i).normal(0.0, 1.0, size=(POINTS, 3))
            expected = np.where(x.sum(axis=1, keepdims=True) > 0, 2 * x, np.cos(x))
            assert result.outputs["grad"].shape == (POINTS, 3)  # every point exactly once
            np.testing.assert_allclose(result.outputs["grad"], expected, rtol=1e-12)

        after = _chunks(data_dir, job.id)
        assert all(state == "done" for state, _, _ in after.values())
        for key, (_, executions, _) in stored.items():
            assert after[key][1] == executions, f"stored chunk {key} was computed again"
        for (key, name), mtime in mtimes.items():
            path = data_dir / "results" / job.id / f"t{key[0]:06d}" / name
            assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
        assert "resuming 1 unfinished jobs" in servers[1].output
        runs = sum(e for _, e, _ in after.values())
        print(f"chunk executions: {runs} for {len(after)} chunks")
    finally:
        for server in servers:
            server.kill()
