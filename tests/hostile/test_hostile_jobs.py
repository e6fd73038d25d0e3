"""Jobs under hostile load, end to end: oversized and flooding submissions, quotas,
old or damaged rows.

One real server with low quotas and a short --job-ttl, on the session's Ray. Each
case asserts its status and how long it took, that a small call kept being answered
within a second meanwhile, and that the server's RSS (and for results, its disk)
came back to where it was.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from support.cluster import RayNode, ServerProcess, start_server

import gradserve
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve_server.jobs.quota import tree_bytes

JOB_QUOTA = 8_000_000
SERVER_QUOTA = 16_000_000
TTL_S = 3.0
RSS_SLACK = 200 << 20


@pytest.fixture(scope="module")
def server(ray_head: RayNode) -> Iterator[ServerProcess]:
    proc = start_server(
        ray_head,
        extra=[
            "--max-job-bytes", str(JOB_QUOTA),
            "--max-stored-bytes", str(SERVER_QUOTA),
            "--job-ttl", str(TTL_S),
        ],
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GradientServiceStub]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield pb_grpc.GradientServiceStub(channel)


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def results_bytes(server: ServerProcess) -> int:
    return tree_bytes(Path(server.data_dir) / "results")


class Probe:
    """A small call (the value of sum(x) at one point) every 50 ms in a thread."""

    def __init__(self, address: str, warm: tuple[str, ...] = ()) -> None:
        self.client = gradserve.Client(address, timeout=30)
        self.warm = warm
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                assert self.client.value("sum(x)", [2.0]) == 2.0
            except BaseException as error:  # reported by the test
                self.errors.append(error)
            self.latencies.append(time.perf_counter() - started)
            self._stop.wait(0.05)

    def mark(self) -> int:
        return len(self.latencies)

    def worst_since(self, mark: int) -> float:
        return max(self.latencies[mark:], default=0.0)

    def __enter__(self) -> Probe:
        # warm every worker on what the case runs (a worker replaced after a cancel
        # starts cold): a worker's first grad, Jacobian or check takes seconds of
        # setup, which is not what these cases measure
        def warm(_: int) -> None:
            self.client.value("sum(x)", [2.0])
            if "grad" in self.warm:
                self.client.grad("sum(x * x)", np.ones((100, 15)), batched=True)
                self.client.jacobian("x * 2.0", np.ones((10, 30)), batched=True)
            if "check" in self.warm:
                self.client.check("sum(x)", [0.0])

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(warm, range(4)))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)
        self.client.close()
        assert not self.errors, self.errors[:3]


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def sample(shape: list[int], count: int, seed: int = 1) -> pb.InputSpec:
    return pb.InputSpec(
        sample=pb.SampleSpec(
            shape=shape,
            count=count,
            seed=seed,
            distribution=pb.Distribution(normal=pb.Normal(mean=0.0, std=1.0)),
        )
    )


@pytest.fixture
def roomy(hostile_server: ServerProcess) -> Iterator[pb_grpc.GradientServiceStub]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(hostile_server.address, options=options) as channel:
        yield pb_grpc.GradientServiceStub(channel)


def test_100k_tasks_submit_watch_cancel_delete_keep_small_calls_fast(
    hostile_server: ServerProcess, roomy: pb_grpc.GradientServiceStub
) -> None:
    # checks on the suite's server, whose job quotas are the defaults: 100,000 specs
    # and reports take about 160 MB of the job store, over this module's low quotas
    server, stub = hostile_server, roomy
    one = pb.Task(function="sum(x)", check=pb.CheckSpec(kind=pb.CHECK_KIND_FINITE_DIFFERENCE))
    one.inputs["x"].tensor.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[1], data=bytes(8)))
    req = pb.SubmitJobRequest(name="hundred-thousand")
    req.tasks.extend([one] * 100_000)
    before = rss(server)
    with Probe(server.address, warm=("check",)) as probe:
        mark = probe.mark()
        job, submit_s = timed(lambda: stub.SubmitJob(req, timeout=60))
        assert job.tasks_total == 100_000
        assert job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
        assert probe.worst_since(mark) < 1.0, f"a small call waited {probe.worst_since(mark)} s"

        # twenty watchers share one reader: small calls stay fast while they follow
        events: list[list[pb.JobEvent]] = [[] for _ in range(20)]

        def follow(into: list[pb.JobEvent]) -> None:
            for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=60):
                into.append(event)

        watchers = [threading.Thread(target=follow, args=(e,)) for e in events]
        for watcher in watchers:
            watcher.start()
        mark = probe.mark()
        time.sleep(1.5)
        watched = sorted(probe.latencies[mark:])
        assert watched and watched[-1] < 1.0, f"a small call waited {watched[-1]} s"
        assert watched[len(watched) // 2] < 0.3, f"p50 {watched[len(watched) // 2]} s"

        mark = probe.mark()
        cancelled, cancel_s = timed(lambda: stub.CancelJob(pb.CancelJobRequest(job_id=job.id)))
        assert cancelled.state == pb.JOB_STATE_CANCELLED
        assert cancel_s < 3.0, f"CancelJob of 100,000 tasks took {cancel_s:.1f} s"
        for watcher in watchers:
            watcher.join(timeout=10)
        assert all(e and e[-1].job.state == pb.JOB_STATE_CANCELLED for e in events)

        deleted, delete_s = timed(lambda: stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id)))
        assert deleted.job.state == pb.JOB_STATE_CANCELLED and delete_s < 5.0
        assert probe.worst_since(mark) < 1.0, f"a small call waited {probe.worst_since(mark)} s"
    code, _ = code_of(lambda: stub.GetJob(pb.GetJobRequest(job_id=job.id)))
    assert code is grpc.StatusCode.NOT_FOUND
    assert rss(server) - before < RSS_SLACK
    print(f"100k tasks: submit {submit_s:.2f} s, cancel {cancel_s:.2f} s, delete {delete_s:.2f} s")


def test_result_quotas_deletion_and_retention_bound_the_disk(
    server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    def grad_job(
        count: int, shape: list[int], fn: str = "sum(x * x)", op: int = pb.OP_GRAD, key: str = ""
    ) -> Any:
        task = pb.Task(function=fn, ops=[op])
        task.inputs["x"].CopyFrom(sample(shape, count))
        req = pb.SubmitJobRequest(tasks=[task], idempotency_key=key)
        return lambda: stub.SubmitJob(req, timeout=30)

    disk, memory = results_bytes(server), rss(server)
    with Probe(server.address, warm=("grad",)) as probe:
        # a job of a few dozen bytes that asks for 1.6 GB of Hessians (20,000 sampled
        # points of 100 inputs): refused from its shapes, before any work
        mark = probe.mark()
        (code, message), took = timed(lambda: code_of(grad_job(20_000, [100], "sum(x**3)",
                                                                pb.OP_HESSIAN)))  # fmt: skip
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and took < 1.0
        assert "1.6 GB" in message and "--max-job-bytes" in message, message

        # 6 MB each: two fit the server's 16 MB, a third does not until one is deleted
        a, b = grad_job(50_000, [15], key="quota-a")(), grad_job(50_000, [15])()
        code, message = code_of(grad_job(50_000, [15]))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-stored-bytes" in message and "6 MB" in message, message
        assert grad_job(50_000, [15], key="quota-a")().id == a.id  # a retry is no new job
        client = gradserve.Client(server.address, timeout=60)
        assert client.job(a.id).wait(timeout=60).state == "succeeded"
        assert results_bytes(server) - disk >= 6_000_000
        deleted = stub.DeleteJob(pb.DeleteJobRequest(job_id=a.id))
        assert deleted.freed_bytes >= 6_000_000 and deleted.job.state == pb.JOB_STATE_SUCCEEDED
        c = grad_job(50_000, [15])()

        # a Jacobian is estimated as if the function had one output; its 30 really
        # go over a quota when written, and the task fails without writing them
        j = grad_job(3_000, [30], "x * 2.0", pb.OP_JACOBIAN)()
        status = client.job(j.id).wait(timeout=60)
        assert status.state == "failed"
        assert status.errors[0].code == "RESOURCE_EXHAUSTED"
        # (which quota it meets first depends on its chunk sizes: both are bounds)
        assert "result quota" in status.errors[0].message or (
            "--max-stored-bytes" in status.errors[0].message
        )
        for job in (b, c):
            assert client.job(job.id).wait(timeout=60).state == "succeeded"
        assert results_bytes(server) - disk <= SERVER_QUOTA
        assert probe.worst_since(mark) < 1.0, f"a small call waited {probe.worst_since(mark)} s"

        # the CLI deletes too; a deleted job is gone for every RPC
        cli = [sys.executable, "-m", "gradserve.cli", "--address", server.address]
        out = subprocess.run([*cli, "jobs", "delete", b.id], capture_output=True, text=True)
        assert out.returncode == 0 and f"deleted {b.id}" in out.stdout, out.stderr
        for call in (
            lambda: stub.GetJob(pb.GetJobRequest(job_id=b.id)),
            lambda: list(stub.GetJobResults(pb.GetJobResultsRequest(job_id=b.id))),
            lambda: stub.DeleteJob(pb.DeleteJobRequest(job_id=b.id)),
        ):
            assert code_of(call)[0] is grpc.StatusCode.NOT_FOUND

        # --job-ttl: what is left is deleted, files and all, once it has ended long enough
        deadline = time.monotonic() + TTL_S + 5
        while time.monotonic() < deadline and results_bytes(server) > disk:
            time.sleep(0.25)
        assert results_bytes(server) == disk
        assert code_of(lambda: stub.GetJob(pb.GetJobRequest(job_id=c.id)))[0] is (
            grpc.StatusCode.NOT_FOUND
        )
        client.close()
    assert rss(server) - memory < RSS_SLACK


def test_old_or_damaged_rows_cannot_break_list_jobs(
    server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    # rows a flood of bad jobs could leave under an older server, written straight
    # into the running server's database: 1,050 failed tasks whose errors repeat a
    # 14,000-character name, a name that is not UTF-8, a timestamp that is not a number
    db = sqlite3.connect(Path(server.data_dir) / "jobs.sqlite3", timeout=30)
    with db:
        for n in range(2):
            job_id = f"job-old{n}"
            db.execute(
                "INSERT INTO jobs (id, name, state, spec_hash, created_at) "
                "VALUES (?, ?, 'failed', 'h', 1.0)",
                (job_id, "n" * 14_000),
            )
            db.executemany(
                "INSERT INTO tasks (job_id, idx, task_id, spec, points, state, error_code, "
                "error_message) VALUES (?, ?, ?, x'', 1, 'failed', 'INVALID_ARGUMENT', ?)",
                [(job_id, i, str(i), "unknown name " + "y" * 14_000) for i in range(1050)],
            )
        db.execute(
            "INSERT INTO jobs (id, name, state, spec_hash, created_at) "
            "VALUES ('job-latin', CAST(x'ff41' AS TEXT), 'succeeded', 'h', 'not a time')"
        )
    db.close()
    memory = rss(server)
    cli = [sys.executable, "-m", "gradserve.cli", "--address", server.address]
    with Probe(server.address) as probe:
        mark = probe.mark()
        page, took = timed(lambda: stub.ListJobs(pb.ListJobsRequest(page_size=1000)))
        assert took < 2.0 and page.ByteSize() < (16 << 20) // 2 + 300_000
        assert {"job-old0", "job-old1", "job-latin"} <= {j.id for j in page.jobs}
        old = next(j for j in page.jobs if j.id == "job-old0")
        assert old.tasks_failed == 1050 and 0 < len(old.errors) < 1050
        assert len(old.name) < 300 and all(len(e.message) < 2_100 for e in old.errors)
        listed = subprocess.run([*cli, "jobs", "list"], capture_output=True, text=True)
        assert listed.returncode == 0 and "job-old1" in listed.stdout, listed.stderr
        assert probe.worst_since(mark) < 1.0
        for job_id in ("job-old0", "job-old1", "job-latin"):
            stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id))
    assert rss(server) - memory < RSS_SLACK


def test_hostile_submissions_are_refused_from_the_spec(
    server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    memory = rss(server)
    cases = [
        (sample([1], 160_000_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-points"),
        (sample([3, 6148914691236517206], 1), grpc.StatusCode.RESOURCE_EXHAUSTED, "sampled"),
        (sample([0, 2**62], 1), grpc.StatusCode.INVALID_ARGUMENT, "at least 1"),
    ]
    cases[2][0].sample.count = 0
    with Probe(server.address) as probe:
        mark = probe.mark()
        for spec, expected, words in cases:
            task = pb.Task(function="sum(x)", ops=[pb.OP_GRAD])
            task.inputs["x"].CopyFrom(spec)
            req = pb.SubmitJobRequest(tasks=[task])
            (code, message), took = timed(lambda r=req: code_of(lambda: stub.SubmitJob(r)))
            assert (code, took < 1.0) == (expected, True) and words in message, message
        token = "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"  # v1:99999999999999999999999999
        code, _ = code_of(lambda: stub.ListJobs(pb.ListJobsRequest(page_token=token)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert probe.worst_since(mark) < 1.0
    assert rss(server) - memory < RSS_SLACK
