"""Batch jobs end to end: the SDK, the CLI and raw RPCs against the real server and Ray."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import gradserve
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

# Data-dependent control flow: runs one point at a time (about a millisecond each),
# so a few thousand points make a job that takes seconds. Its gradient is 2x where
# sum(x) > 0 and cos(x) elsewhere.
SLOW = """def f(x):
    if sum(x) > 0:
        return sum(x * x)
    else:
        return sum(sin(x))
"""


def slow_grad(x: np.ndarray) -> np.ndarray:
    return np.where(x.sum(axis=1, keepdims=True) > 0, 2 * x, np.cos(x))


def normal(count: int, shape: list[int], seed: int) -> np.ndarray:
    """What the server draws for {sample: {dist: normal, ...}} (NumPy PCG64)."""
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(count, *shape))


def sample(count: int, shape: list[int], seed: int) -> dict[str, object]:
    return {
        "sample": {
            "dist": "normal",
            "mean": 0,
            "std": 1,
            "shape": shape,
            "count": count,
            "seed": seed,
        }
    }


@pytest.fixture(scope="module")
def stub(address: str) -> Iterator[pb_grpc.GradientServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GradientServiceStub(channel)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return, attr-defined]


def test_a_failing_task_fails_alone_and_the_job_succeeds(client: gradserve.Client) -> None:
    job = client.submit(
        {
            "name": "mixed",
            "tasks": [
                {
                    "id": "quad",
                    "function": "2 * dot(x, x)",
                    "inputs": {"x": sample(300, [4], 7)},
                    "ops": ["grad", "hessian"],
                    "check": {"grad": "4 * x"},
                },
                {"function": "sum(sin(x))", "inputs": {"x": [0.0, 0.5, 1.0]}, "ops": ["grad"]},
                {"id": "typo", "function": "sum(sin(x)", "inputs": {"x": [1.0]}, "ops": ["grad"]},
                {
                    "id": "wrong",
                    "function": "sum(x * x)",
                    "inputs": {"x": [1.0, 2.0]},
                    "check": {"grad": "x"},
                },
            ],
        }
    )
    status = job.wait(timeout=120)
    assert status.state == "succeeded"
    assert (status.tasks_total, status.tasks_done, status.tasks_failed) == (4, 4, 1)
    assert status.points_done == status.points_total == 300 + 1 + 1 + 1
    assert status.created_at <= status.started_at <= status.finished_at
    (error,) = status.errors
    assert (error.task_index, error.task_id, error.code) == (2, "typo", "INVALID_ARGUMENT")
    assert "line 1" in error.message

    results = list(job.results())
    assert [r.task_id for r in results] == ["quad", "1", "typo", "wrong"]
    quad, sine, typo, wrong = results
    x = normal(300, [4], 7)
    np.testing.assert_allclose(quad.outputs["grad"], 4 * x, rtol=1e-12)
    np.testing.assert_allclose(quad.outputs["hessian"], np.broadcast_to(4 * np.eye(4), (300, 4, 4)))
    assert quad.check is not None and quad.check.passed and quad.check.num_points == 300
    assert quad.metadata.points == 300 and quad.metadata.execution_path == "vmap"
    np.testing.assert_allclose(sine.outputs["grad"], np.cos([0.0, 0.5, 1.0]))
    assert typo.error is not None and typo.error_code == "INVALID_ARGUMENT" and not typo.outputs
    # a wrong claim is a finished check that did not pass, not a failed task
    assert wrong.error is None and wrong.check is not None and not wrong.check.passed


def test_a_job_whose_every_task_fails_is_failed(client: gradserve.Client) -> None:
    job = client.submit(
        {
            "tasks": [
                {"function": "sum(x) +", "inputs": {"x": [1.0]}, "ops": ["value"]},
                {"function": "y", "inputs": {"x": [1.0]}, "ops": ["value"]},
            ]
        }
    )
    status = job.wait(timeout=60)
    assert status.state == "failed" and status.tasks_failed == 2
    assert [e.code for e in status.errors] == ["INVALID_ARGUMENT", "INVALID_ARGUMENT"]


def test_idempotency_key_returns_the_same_job(client: gradserve.Client) -> None:
    spec = {"tasks": [{"function": "sum(x * x)", "inputs": {"x": [1.0, 2.0]}, "ops": ["grad"]}]}
    key = f"key-{time.time_ns()}"
    first = client.submit(spec, idempotency_key=key)
    again = client.submit(spec, idempotency_key=key)
    assert first.id == again.id
    assert first.status().idempotency_key == key
    other = {"tasks": [{"function": "sum(x)", "inputs": {"x": [1.0]}, "ops": ["grad"]}]}
    with pytest.raises(gradserve.GradserveError) as info:
        client.submit(other, idempotency_key=key)
    assert info.value.code == "ALREADY_EXISTS" and first.id in info.value.message
    assert client.submit(spec).id != first.id  # no key: a new job each time
    assert len([j for j in client.jobs() if j.idempotency_key == key]) == 1


def test_malformed_jobs_are_refused_and_unknown_jobs_not_found(
    client: gradserve.Client, stub: pb_grpc.GradientServiceStub
) -> None:
    def task(**fields: object) -> pb.Task:
        t = pb.Task(function="sum(x)", **{"ops": [pb.OP_GRAD], **fields})  # type: ignore[arg-type]
        t.inputs["x"].tensor.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[1], data=bytes(8)))
        return t

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.SubmitJob(pb.SubmitJobRequest())) == invalid
    duplicate = pb.SubmitJobRequest(tasks=[task(id="a"), task(id="a")])
    assert _code(lambda: stub.SubmitJob(duplicate)) == invalid
    assert _code(lambda: stub.SubmitJob(pb.SubmitJobRequest(tasks=[task(ops=[99])]))) == invalid
    with pytest.raises(gradserve.InvalidArgumentError, match=r"task 1.*already used by task 0"):
        client.submit(
            {
                "tasks": [
                    {"id": "a", "function": "x", "inputs": {"x": 1}, "ops": "value"},
                    {"id": "a", "function": "x", "inputs": {"x": 1}, "ops": "value"},
                ]
            }
        )
    # the SDK refuses what it can see is wrong before any call, naming task and key
    with pytest.raises(gradserve.InvalidArgumentError, match=r"task 0 \('t'\): ops: unknown"):
        client.submit({"tasks": [{"id": "t", "function": "x", "inputs": {"x": 1}, "ops": ["grd"]}]})

    missing = client.job("job-does-not-exist")
    for call in (missing.status, missing.cancel, missing.wait, lambda: list(missing.results())):
        with pytest.raises(gradserve.NotFoundError):
            call()


def test_list_jobs_pages_and_filters(
    client: gradserve.Client, stub: pb_grpc.GradientServiceStub
) -> None:
    spec = {"tasks": [{"function": "sum(x)", "inputs": {"x": [1.0]}, "ops": ["grad"]}]}
    mine = [client.submit(spec, name=f"page-{i}") for i in range(3)]
    for job in mine:
        job.wait(timeout=60)
    ids = {j.id for j in mine}
    seen: list[str] = []
    req = pb.ListJobsRequest(page_size=1)
    pages = 0
    while True:
        resp = stub.ListJobs(req)
        assert len(resp.jobs) <= 1
        seen += [j.id for j in resp.jobs]
        pages += 1
        if not resp.next_page_token:
            break
        req.page_token = resp.next_page_token
    assert len(seen) == len(set(seen)) and ids <= set(seen) and pages >= 3
    # newest first
    assert [i for i in seen if i in ids] == [j.id for j in reversed(mine)]
    succeeded = {j.id for j in client.jobs("succeeded", page_size=2)}
    assert ids <= succeeded
    assert not ids & {j.id for j in client.jobs(["cancelled", "queued"])}
    assert _code(lambda: stub.ListJobs(pb.ListJobsRequest(page_token="garbage!"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    with pytest.raises(gradserve.InvalidArgumentError, match="unknown state"):
        client.jobs("done")


def test_watch_job_streams_progress_until_the_end(
    client: gradserve.Client, stub: pb_grpc.GradientServiceStub
) -> None:
    job = client.submit(
        {
            "tasks": [
                {"function": SLOW, "inputs": {"x": sample(1024, [3], i)}, "ops": ["grad"]}
                for i in range(3)
            ]
        }
    )
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=120))
    states = [e.job.state for e in events]
    assert states[-1] == pb.JOB_STATE_SUCCEEDED
    assert states == sorted(states), "states only move forward"
    done = [e.job.points_done for e in events]
    assert done == sorted(done) and done[-1] == 3 * 1024
    assert len(events) >= 3  # some progress in between
    assert all(e.message for e in events)
    # watching an ended job: one event, the final state
    (last,) = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=30))
    assert last.job.state == pb.JOB_STATE_SUCCEEDED


def test_results_resume_from_a_task_index(client: gradserve.Client) -> None:
    job = client.submit(
        {
            "tasks": [
                {
                    "id": f"t{i}",
                    "function": "sum(x * x) * c",
                    "inputs": {"x": [1.0, float(i)], "c": float(i)},
                    "ops": ["grad"],
                    "wrt": "x",
                }
                for i in range(4)
            ]
        }
    )
    # results() waits for running tasks in order, so it can be called at once
    assert [r.task_id for r in job.results()] == ["t0", "t1", "t2", "t3"]
    tail = list(job.results(start_task=2))
    assert [r.task_index for r in tail] == [2, 3]
    np.testing.assert_allclose(tail[0].outputs["grad"], [4.0, 8.0])
    assert list(job.results(start_task=4)) == []


def test_cancel_mid_run_stops_the_job_and_unary_calls_still_get_turns(
    client: gradserve.Client,
) -> None:
    job = client.submit(
        {
            "tasks": [
                {"function": SLOW, "inputs": {"x": sample(4096, [3], i)}, "ops": ["grad"]}
                for i in range(6)
            ]
        }
    )
    deadline = time.monotonic() + 60
    while job.status().points_done == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # the pool serves tenants in turn: a call arriving behind the job waits about a chunk
    started = time.monotonic()
    np.testing.assert_allclose(client.grad("sum(x * x)", {"x": [1.0, 2.0]}), [2.0, 4.0])
    assert time.monotonic() - started < 10
    status = job.cancel()
    assert status.state == "cancelled" and status.finished_at > 0
    stopped_at = status.points_done
    assert stopped_at < status.points_total
    time.sleep(1.5)
    after = job.status()
    assert after.state == "cancelled" and after.points_done == stopped_at
    assert job.cancel().state == "cancelled"  # cancelling again changes nothing
    results = list(job.results())
    assert len(results) == 6
    assert any(r.error_code == "CANCELLED" for r in results)
    assert all(r.error_code in (None, "CANCELLED") for r in results)
    # the workers that were cancelled mid-chunk were replaced
    np.testing.assert_allclose(client.grad("sum(x * x)", {"x": [3.0]}), [6.0])


def test_yaml_job_file_through_the_sdk(client: gradserve.Client, tmp_path: Path) -> None:
    np.save(tmp_path / "points.npy", np.array([[0.5, -1.0], [2.0, 3.0]]))
    (tmp_path / "job.yaml").write_text(
        """
name: yaml-job
tasks:
  - id: from-npy
    function: "sum(x * x * x)"
    inputs: {x: {npy: points.npy}}
    batched: true
    ops: [grad]
    check: {grad: "3 * x * x", atol: 1e-9}
  - id: sampled-hessian
    function: "sum(sin(x))"
    inputs:
      x: {sample: {dist: uniform, low: -1, high: 1, shape: [3], count: 50, seed: 3}}
    ops: [hessian]
"""
    )
    job = client.submit(tmp_path / "job.yaml")
    assert job.wait(timeout=120).state == "succeeded"
    npy, hess = job.results()
    pts = np.load(tmp_path / "points.npy")
    np.testing.assert_allclose(npy.outputs["grad"], 3 * pts**2)
    assert npy.check is not None and npy.check.passed
    x = np.random.default_rng(3).uniform(-1, 1, size=(50, 3))
    expected = np.stack([np.diag(-np.sin(p)) for p in x])
    np.testing.assert_allclose(hess.outputs["hessian"], expected, atol=1e-12)
    (tmp_path / "bad.yaml").write_text("tasks:\n  - function: x\n    inputs: {x: {npy: no.npy}}\n")
    with pytest.raises(gradserve.InvalidArgumentError, match=r"task 0: inputs.x: no such .npy"):
        client.submit(tmp_path / "bad.yaml")


def test_cli_submit_wait_and_jobs_commands(address: str, tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "name": "cli-job",
                "tasks": [
                    {
                        "id": "good",
                        "function": "2 * dot(x, x)",
                        "inputs": {"x": [1.0, 2.0]},
                        "ops": ["grad", "hessian"],
                        "check": {"grad": "4 * x"},
                    },
                    {
                        "id": "bad",
                        "function": "2 * dot(x, x)",
                        "inputs": {"x": [1.0, 2.0]},
                        "check": {"grad": "2 * x"},
                    },
                    {"id": "broken", "function": "dot(x)", "inputs": {"x": [1.0]}, "ops": ["grad"]},
                ],
            }
        )
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gradserve.cli", "--address", address, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = tmp_path / "out"
    run = cli("submit", str(tmp_path / "job.json"), "--wait", "--output", str(out))
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert job_id.startswith("job-")
    assert "tasks" not in run.stderr  # no progress bar when stderr is not a terminal
    summary = json.loads((out / "summary.json").read_text())
    assert summary["job"]["state"] == "succeeded" and summary["job"]["id"] == job_id
    good, bad, broken = summary["tasks"]
    assert good["ok"] and good["check"]["passed"] and good["arrays"] == ["grad", "hessian"]
    assert bad["ok"] and not bad["check"]["passed"] and bad["file"] is None
    assert not broken["ok"] and broken["error_code"] == "INVALID_ARGUMENT"
    arrays = np.load(out / good["file"])
    np.testing.assert_allclose(arrays["grad"], [4.0, 8.0])
    np.testing.assert_allclose(arrays["hessian"], 4 * np.eye(2))

    status = cli("jobs", "status", job_id)
    assert status.returncode == 0 and "succeeded" in status.stdout and "broken" in status.stdout
    listed = cli("jobs", "list", "--state", "succeeded")
    assert job_id in listed.stdout
    again = tmp_path / "again"
    assert cli("jobs", "results", job_id, "--output", str(again)).returncode == 0
    assert json.loads((again / "summary.json").read_text())["tasks"] == summary["tasks"]
    assert "succeeded" in cli("jobs", "cancel", job_id).stdout
    missing = cli("jobs", "status", "job-nope")
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr
    submitted = cli("submit", str(tmp_path / "job.json"))
    assert submitted.returncode == 0 and submitted.stdout.strip().startswith("job-")


def test_async_client_jobs(address: str) -> None:
    async def run() -> None:
        async with gradserve.AsyncClient(address) as client:
            job = await client.submit(
                {
                    "tasks": [
                        {
                            "function": "sum(exp(x))",
                            "inputs": {"x": [0.0, 1.0]},
                            "ops": ["value", "grad"],
                        }
                    ]
                }
            )
            assert isinstance(job, gradserve.AsyncJob)
            assert (await job.wait(timeout=60)).state == "succeeded"
            (result,) = [r async for r in job.results()]
            np.testing.assert_allclose(result.outputs["grad"], np.exp([0.0, 1.0]))
            np.testing.assert_allclose(result.outputs["value"], np.exp([0.0, 1.0]).sum())
            assert (await client.job(job.id).status()).tasks_done == 1
            assert job.id in {j.id for j in await client.jobs("succeeded")}
            assert (await job.cancel()).state == "succeeded"

    asyncio.run(run())


def test_a_job_of_1000_tasks_completes(client: gradserve.Client) -> None:
    tasks = [
        {
            "id": f"s{i}",
            "function": "sum(x * x) * c",
            "wrt": "x",
            "inputs": {"x": [float(i), 1.0, -1.0], "c": 0.5},
            "ops": ["grad"],
        }
        for i in range(1000)
    ]
    started = time.monotonic()
    job = client.submit({"name": "thousand", "tasks": tasks})
    status = job.wait(timeout=240)
    elapsed = time.monotonic() - started
    assert status.state == "succeeded" and status.tasks_done == 1000 and not status.tasks_failed
    count = 0
    for result in job.results():
        np.testing.assert_allclose(result.outputs["grad"], [float(result.task_index), 1.0, -1.0])
        count += 1
    assert count == 1000
    print(f"1000 tasks in {elapsed:.1f} s")
