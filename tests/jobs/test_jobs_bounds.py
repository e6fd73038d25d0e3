"""Jobs under hostile input, without a cluster: bounded job files, sizes refused from
the spec, clipped strings, ListJobs paged by bytes, damaged rows, the retention
sweep, result quotas and the shared WatchJob reader. (End to end with a real server:
tests/hostile/test_hostile_jobs.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gradserve import _safeload, jobspec
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.budgets import Budgets
from gradserve_server.config import ServerConfig, parse_config, parse_duration
from gradserve_server.errors import ServiceError
from gradserve_server.jobs import bounded, codec, files, quota, spec
from gradserve_server.jobs.feed import Feeds
from gradserve_server.jobs.manager import JobManager, _decode_token
from gradserve_server.jobs.notify import Notifier
from gradserve_server.jobs.rows import NewTask
from gradserve_server.jobs.store import DB_NAME, JobStore
from gradserve_server.streams import Later

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{x}: &{x} [{', '.join([f'*{p}'] * 9)}]"
            for p, x in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        'tasks: [{function: "sum(x)", inputs: {x: *i}, ops: [grad]}]',
    ]
)


# ------------------------------------------------------------- job files (item 14)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bomb.yaml", BOMB, "expands to over 5000000 nodes"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested deeper than 100 levels"),
        ("deep.yaml", "a: " + "[" * 150 + "]" * 150, "nested deeper than 100 levels"),
        ("deeper.yaml", "a: " + "[" * 5000 + "]" * 5000, "not valid YAML"),
        ("block.yaml", "".join(f"{' ' * i}- \n" for i in range(0, 300, 2)), "nested deeper"),
        ("rec.yaml", "a: &a [*a]\ntasks: []\n", "refers to a node that contains it"),
        ("digits.json", '{"tasks": ' + "1" * 10_000 + "}", "cannot be read: ValueError"),
        ("latin1.json", b'{"name": "\xff"}', "not UTF-8"),
    ],
)
def test_hostile_job_files_get_a_clean_error_fast_and_small(
    tmp_path: Path, name: str, text: str | bytes, message: str
) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(jobspec.JobSpecError, match=message) as info:
            jobspec.load(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2.0
    assert peak < 64 << 20, f"{peak} bytes to refuse {name}"
    assert name in info.value.message


def test_aliases_are_counted_and_a_shared_anchor_still_loads(tmp_path: Path) -> None:
    first = '  - {function: "sum(x)", inputs: {x: &x [1.0, 2.0]}, ops: [grad]}\n'
    rest = '  - {function: "sum(x)", inputs: {x: *x}, ops: [grad]}\n' * 49
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"name: shared\ntasks:\n{first}{rest}")
    assert len(jobspec.load(str(ok)).tasks) == 50
    many = tmp_path / "many.yaml"
    many.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * (_safeload.MAX_ALIASES + 1)) + "]\n")
    with pytest.raises(jobspec.JobSpecError, match="more than 1000 aliases"):
        jobspec.load(str(many))


def test_the_file_size_is_capped_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(_safeload.LoadError, match="over the limit of 1000"):
        _safeload.read_bounded(path, max_bytes=1000)


def test_cli_refuses_a_bomb_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gradserve.cli", "--address", "127.0.0.1:1", "submit", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.perf_counter() - started < 10
    assert proc.returncode == 3
    assert "alias bomb" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------- SubmitJob's sizes


def _task(**inputs: pb.InputSpec) -> pb.Task:
    task = pb.Task(function="sum(x)", ops=[pb.OP_GRAD])
    for name, value in inputs.items():
        task.inputs[name].CopyFrom(value)
    return task


def _sample(shape: list[int], count: int, dtype: int = pb.DTYPE_UNSPECIFIED) -> pb.InputSpec:
    return pb.InputSpec(sample=pb.SampleSpec(shape=shape, count=count, dtype=dtype))


@pytest.mark.parametrize(
    ("task", "code", "message"),
    [
        (_task(x=_sample([1], 160_000_000)), "RESOURCE_EXHAUSTED", "160000000 points"),
        (
            _task(x=_sample([3, 6148914691236517206], 1)),
            "RESOURCE_EXHAUSTED",
            "18446744073709551618 sampled elements",
        ),
        (_task(x=_sample([2], 0)), "INVALID_ARGUMENT", "count must be at least 1"),
        (_task(**{"y" * 14_000: _sample([1], 1)}), "INVALID_ARGUMENT", "input name of 14000"),
        (
            pb.Task(function="x" * 30_000, ops=[pb.OP_GRAD], inputs={"x": _sample([1], 1)}),
            "RESOURCE_EXHAUSTED",
            "max_source_chars",
        ),
        (_task(x=_sample([1000], 40_000)), "RESOURCE_EXHAUSTED", "--max-request-bytes"),
    ],
)
def test_submit_refuses_sizes_from_the_spec_alone(task: pb.Task, code: str, message: str) -> None:
    config = ServerConfig()
    bounds = spec.SizeBounds.of(config, Budgets.from_config(config))
    started = time.perf_counter()
    with pytest.raises(ServiceError, match=message) as info:
        spec.validate(pb.SubmitJobRequest(tasks=[task]), bounds)
    assert info.value.code.name == code
    assert time.perf_counter() - started < 0.1  # nothing was drawn or allocated
    assert len(info.value.message) < 600


def test_calls_and_jobs_check_a_sample_spec_with_one_function() -> None:
    config = ServerConfig(max_points=10)
    budgets = Budgets.from_config(config)
    for bad, words in (
        (pb.SampleSpec(shape=[2, -1], count=3), "sample shape [2, -1] is not a valid shape"),
        (pb.SampleSpec(shape=[2], count=0), "sample count must be at least 1, not 0"),
    ):
        with pytest.raises(ServiceError) as call:
            budgets.estimate_samples({"x": bad}, "check(fn, inputs)")
        task = _task(x=pb.InputSpec(sample=bad))
        with pytest.raises(ServiceError) as job:
            spec.validate(pb.SubmitJobRequest(tasks=[task]), spec.SizeBounds.of(config, budgets))
        assert words in call.value.message and words in job.value.message
        assert call.value.code == job.value.code
    assert spec.SizeBounds.of(config, budgets).max_sample_elements == 160


def test_too_many_tasks_is_refused_before_looking_at_any() -> None:
    req = pb.SubmitJobRequest()
    req.tasks.add()  # one task that would not validate, repeated
    req.tasks.extend([req.tasks[0]] * spec.MAX_TASKS)
    started = time.perf_counter()
    with pytest.raises(ServiceError, match="100001 tasks is over the limit of 100000"):
        spec.check_counts(req)
    assert time.perf_counter() - started < 0.05


def test_result_estimates_from_shapes() -> None:
    hessian = pb.Task(ops=[pb.OP_HESSIAN], inputs={"x": _sample([100], 20_000)})
    assert quota.task_result_bytes(hessian) == 20_000 * 100 * 100 * 8 + 128
    mixed = pb.Task(
        ops=[pb.OP_VALUE, pb.OP_GRAD],
        wrt=["a"],
        dtype=pb.DTYPE_FLOAT32,
        batched=True,
        inputs={
            "a": pb.InputSpec(tensor=pb.Tensor(shape=[50, 3])),
            "b": pb.InputSpec(tensor=pb.Tensor(shape=[50, 7])),
        },
    )
    assert quota.task_result_bytes(mixed) == 50 * (1 + 3) * 4 + 2 * 128
    assert quota.task_result_bytes(pb.Task(check=pb.CheckSpec(), inputs=mixed.inputs)) == 0
    # a declared shape of any size gives its true estimate, never a wrapped one
    huge = pb.Task(ops=[pb.OP_GRAD], inputs={"x": _sample([2**62, 2**62], 2**40)})
    assert quota.task_result_bytes(huge) == 2**40 * 2**124 * 8 + 128
    assert quota.estimate([mixed, hessian]).largest_index == 1


def test_job_flags_parse() -> None:
    config = parse_config(
        ["--job-ttl", "12h", "--max-job-bytes", "1000", "--max-stored-bytes", "0",
         "--max-tenant-stored-bytes", "500", "--max-active-jobs-per-tenant", "7"]
    )  # fmt: skip
    budgets = Budgets.from_config(config)
    assert (config.job_ttl_s, budgets.job_bytes, budgets.stored_bytes) == (43200.0, 1000, 0)
    assert (budgets.tenant_stored_bytes, config.max_active_jobs_per_tenant) == (500, 7)
    defaults = parse_config([])
    assert Budgets.from_config(defaults).tenant_stored_bytes == 4 << 30
    assert defaults.max_active_jobs_per_tenant == 100
    assert parse_duration("0") == 0.0
    for bad in ("soon", "-1", "inf"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)


@pytest.mark.parametrize("token", ["v1:99999999999999999999999999", "v1:-5", "x" * 10_000])
def test_page_tokens_out_of_range_are_invalid_not_internal(token: str) -> None:
    import base64

    encoded = base64.urlsafe_b64encode(token.encode()).decode()
    with pytest.raises(ServiceError) as info:
        _decode_token(encoded)
    assert info.value.code.name == "INVALID_ARGUMENT"


# ------------------------------------------------------------- strings and pages (item 11)


def _manager(tmp_path: Path, **config: object) -> JobManager:
    # the sweep, listing and deletion need the store only: no cluster, no service
    return JobManager(ServerConfig(data_dir=tmp_path, **config), service=None)  # type: ignore[arg-type]


def _failed_job(store: JobStore, job_id: str, tasks: int, message: str) -> None:
    """A job whose every task failed with ``message``, written as it is stored
    (through fail_task) or, for many tasks, in one go the way an older server's
    unclipped rows would be."""
    store.create_job(job_id, "n", "", "h", [NewTask(f"t{i}", b"s", 1) for i in range(tasks)])
    if tasks == 1:
        store.fail_task(job_id, 0, "INVALID_ARGUMENT", message)
    else:
        with sqlite3.connect(store.data_dir / DB_NAME) as db:
            db.execute(
                "UPDATE tasks SET state = 'failed', error_code = 'INVALID_ARGUMENT', "
                "error_message = ? WHERE job_id = ?",
                (message, job_id),
            )
        db.close()
    store.finish_job(job_id, "failed")


def test_stored_errors_are_clipped_with_a_marker(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _failed_job(store, "j", 1, "unknown name " + "y" * 14_000)
    (_, _, _, message), = store.errors("j", 10)  # fmt: skip
    assert len(message) < bounded.MAX_ERROR_CHARS + 50
    assert message.endswith(f"… [{14_013 - bounded.MAX_ERROR_CHARS} more characters]")


def test_list_jobs_pages_by_bytes_and_survives_damaged_rows(tmp_path: Path) -> None:
    manager = _manager(tmp_path, max_message_bytes=1 << 20)
    store = manager.store
    for n in range(3):
        _failed_job(store, f"job-{n}", 1050, "x" * 1000)
    # rows as an older server, or something else, left them: huge texts written
    # unclipped, bytes that are not UTF-8, a timestamp that is not a number
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE tasks SET error_message = ? WHERE job_id = 'job-0'", ("e" * 14_000,))
    db.execute("UPDATE jobs SET name = ? WHERE id = 'job-1'", ("n" * 14_000,))
    db.execute("UPDATE jobs SET name = CAST(x'ff41' AS TEXT) WHERE id = 'job-2'")
    db.execute(
        "INSERT INTO jobs (id, name, state, spec_hash, created_at) "
        "VALUES ('job-bad', 'bad', 'succeeded', 'h', 'not a time')"
    )
    db.commit()
    db.close()

    async def everything() -> list[pb.Job]:
        seen: list[pb.Job] = []
        req = pb.ListJobsRequest(page_size=1000)
        while True:
            resp = await manager.list(req)
            assert resp.ByteSize() <= (1 << 20) // 2 + 300_000
            seen += resp.jobs
            if not resp.next_page_token:
                return seen
            req.page_token = resp.next_page_token

    jobs = asyncio.run(everything())
    assert [j.id for j in jobs] == ["job-bad", "job-2", "job-1", "job-0"]
    bad, latin, long_name, long_errors = jobs
    assert bad.state == pb.JOB_STATE_UNSPECIFIED and "damaged" in bad.name
    assert latin.name == "\ufffdA"
    assert long_name.name.endswith("more characters]") and len(long_name.name) < 300
    assert long_errors.tasks_failed == 1050
    assert 0 < len(long_errors.errors) < 1050  # cut by bytes; tasks_failed has the count
    assert sum(e.ByteSize() for e in long_errors.errors) <= codec.MAX_ERRORS_BYTES
    assert all(len(e.message) < bounded.MAX_ERROR_READ_CHARS + 30 for e in long_errors.errors)
    manager.store.close()


# ------------------------------------------------------------- retention (item 12)


def test_sweep_deletes_expired_jobs_and_orphaned_files(tmp_path: Path) -> None:
    manager = _manager(tmp_path, job_ttl_s=60.0)
    store = manager.store
    for job_id in ("old", "new", "running"):
        store.create_job(job_id, "", "", "h", [NewTask("t", b"s", 1)])
        files.write_chunk(store.task_dir(job_id, 0), "compute-c00000", {"grad": {"x": np.ones(8)}})
        store.add_written(job_id, 8 * 8 + 128)
    store.finish_job("old", "succeeded")
    store.finish_job("new", "succeeded")
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE jobs SET finished_at = finished_at - 120 WHERE id = 'old'")
    db.commit()
    db.close()
    orphan = store.results_dir / "job-gone"
    orphan.mkdir()
    (orphan / "x.npy").write_bytes(b"0" * 100)
    assert store.claimed_bytes() == 3 * (64 + 128)

    assert asyncio.run(manager.sweep()) == 1
    assert store.get_job("old") is None and store.task_states("old") == []
    assert not (store.results_dir / "old").exists() and not orphan.exists()
    assert store.get_job("new") is not None and (store.results_dir / "new").exists()
    assert store.get_job("running") is not None
    assert store.claimed_bytes() == 2 * (64 + 128)
    store.close()


def test_retention_is_opt_in_so_an_upgrade_keeps_old_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRADSERVE_JOB_TTL", raising=False)
    assert parse_config([]).job_ttl_s == 0 == ServerConfig().job_ttl_s
    manager = _manager(tmp_path, job_ttl_s=parse_config([]).job_ttl_s)
    store = manager.store
    store.create_job("ancient", "", "", "h", [NewTask("t", b"s", 1)])
    store.finish_job("ancient", "succeeded")
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE jobs SET finished_at = finished_at - 400 * 86400")
    db.commit()
    db.close()
    assert asyncio.run(manager.sweep()) == 0  # what start() runs first
    assert store.get_job("ancient") is not None
    store.close()


def test_quota_charges_and_refuses(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    quotas = quota.Quotas(store, per_job=1000, per_server=1500)
    small = quota.Estimate(600, 600, 0)

    def create(job_id: str) -> object:
        return lambda: store.create_job(job_id, "", "", "h", [NewTask("t", b"s", 1)])

    assert quotas.admit(small, create("a")) == ("a", True)  # type: ignore[arg-type]
    with pytest.raises(ServiceError, match="over the per-job result quota") as info:
        quotas.admit(quota.Estimate(2000, 2000, 0), create("b"))  # type: ignore[arg-type]
    assert "--max-job-bytes" in info.value.message and "2 kB" in info.value.message
    with pytest.raises(ServiceError, match="--max-stored-bytes"):
        quotas.admit(quota.Estimate(1000, 1000, 0), create("c"))  # type: ignore[arg-type]
    assert store.get_job("c") is None  # refused before anything was stored
    quotas.charge("a", 500)  # within its estimate: the server total does not move
    assert store.claimed_bytes() == 600
    quotas.charge("a", 400)
    assert store.claimed_bytes() == 900
    with pytest.raises(ServiceError, match="per-job result quota"):
        quotas.charge("a", 200)
    store.finish_job("a", "succeeded")
    assert store.claimed_bytes() == 900
    store.add_written("deleted-meanwhile", 100)  # a late chunk of a deleted job
    assert store.usage("deleted-meanwhile") == (0, 0)
    store.close()


def _creator(store: JobStore, job_id: str, tenant: str = "") -> Callable[[], tuple[str, bool]]:
    return lambda: store.create_job(job_id, "", "", "h", [NewTask("t", b"s", 1)], tenant)


def test_result_quotas_are_per_tenant_and_tell_only_the_callers_own_usage(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path)
    quotas = quota.Quotas(store, per_job=0, per_server=2500, per_tenant=1000)
    job = quota.Estimate(900, 900, 0)
    assert quotas.admit(job, _creator(store, "a1", "alice"), "alice") == ("a1", True)
    with pytest.raises(ServiceError, match="--max-tenant-stored-bytes") as info:
        quotas.admit(job, _creator(store, "a2", "alice"), "alice")
    assert "your jobs already take 900 bytes" in info.value.message
    # alice's jobs do not count against bob's quota
    assert quotas.admit(job, _creator(store, "b1", "bob"), "bob") == ("b1", True)
    with pytest.raises(ServiceError, match="--max-stored-bytes") as info:
        quotas.admit(quota.Estimate(800, 800, 0), _creator(store, "c1", "carol"), "carol")
    # the backstop says nothing of what the others store (1800) or what is left (700)
    message = info.value.message
    assert info.value.code.name == "RESOURCE_EXHAUSTED"
    assert not any(n in message for n in ("1800", "1.8 kB", "700", "2500", "2.5 kB")), message
    assert store.get_job("a2") is None and store.get_job("c1") is None
    # writing is charged against the tenant's quota too, and says only its own total
    quotas.charge("b1", 900)
    with pytest.raises(ServiceError, match="--max-tenant-stored-bytes") as info:
        quotas.charge("b1", 200)
    assert "1.1 kB" in info.value.message and "1.8" not in info.value.message
    store.close()


def test_active_jobs_are_capped_per_tenant(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    quotas = quota.Quotas(store, per_job=0, per_server=0, active_per_tenant=2)
    job = quota.Estimate(10, 10, 0)
    for n in range(2):
        quotas.admit(job, _creator(store, f"a{n}", "alice"), "alice")
    with pytest.raises(ServiceError, match="--max-active-jobs-per-tenant") as info:
        quotas.admit(job, _creator(store, "a2", "alice"), "alice")
    assert info.value.code.name == "RESOURCE_EXHAUSTED" and "you have 2 jobs" in info.value.message
    assert quotas.admit(job, _creator(store, "b0", "bob"), "bob")[1]
    store.finish_job("a0", "succeeded")  # an ended job no longer counts
    assert quotas.admit(job, _creator(store, "a2", "alice"), "alice")[1]
    store.close()


def test_specs_and_reports_count_so_check_jobs_cannot_grow_the_store_unbounded(
    tmp_path: Path,
) -> None:
    # a check stores no arrays, but its spec (here 800 kB of inline tensor) and its
    # report stay in the database until the job is deleted
    task = pb.Task(function="sum(x)", check=pb.CheckSpec())
    task.inputs["x"].tensor.CopyFrom(
        pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[100_000], data=bytes(800_000))
    )
    req = pb.SubmitJobRequest(tasks=[task])
    found = quota.estimate(req.tasks)
    assert found.total == found.records > 800_000
    sampled = pb.Task(check=pb.CheckSpec(), inputs={"x": _sample([3], 50_000)})
    assert quota.task_record_bytes(sampled) >= 50_000 * quota.CHECK_POINT_BYTES
    store = JobStore(tmp_path)
    quotas = quota.Quotas(store, per_job=0, per_server=0, per_tenant=4_000_000)
    admitted = 0
    with pytest.raises(ServiceError, match="--max-tenant-stored-bytes"):
        for n in range(10):
            quotas.admit(found, _creator(store, f"j{n}", "t"), "t")
            store.finish_job(f"j{n}", "succeeded")
            admitted += 1
    assert admitted == 4
    # an ended job keeps counting its records (they are 'written' from the start)
    assert store.usage("j0") == (found.total, found.records)
    assert store.claimed_bytes("t") == 4 * found.records
    store.close()


@pytest.mark.parametrize(
    ("field", "req"),
    [
        ("name", pb.SubmitJobRequest(name="a\nb")),
        ("idempotency_key", pb.SubmitJobRequest(idempotency_key="alice\x1fkey")),
        ("tasks[1].id", pb.SubmitJobRequest(tasks=[pb.Task(id="ok"), pb.Task(id="t\x00")])),
    ],
)
def test_control_characters_in_names_keys_and_ids_are_refused(
    field: str, req: pb.SubmitJobRequest
) -> None:
    if not req.tasks:
        req.tasks.append(pb.Task())
    for task in req.tasks:
        task.function, task.ops[:] = "sum(x)", [pb.OP_GRAD]
        task.inputs["x"].CopyFrom(_sample([1], 1))
    with pytest.raises(ServiceError, match="control character") as info:
        spec.validate(req)
    assert info.value.code.name == "INVALID_ARGUMENT" and info.value.field == field


# ------------------------------------------------------------- sharing (item 8)


def test_twenty_watchers_share_one_read_per_change() -> None:
    async def scenario() -> tuple[int, list[list[int]]]:
        notifier = Notifier()
        state = {"value": 0, "reads": 0}

        async def read(job_id: str) -> tuple[int | None, bool]:
            state["reads"] += 1
            await asyncio.sleep(0.01)
            return state["value"], state["value"] >= 5

        feeds: Feeds[int] = Feeds(notifier, read, settle_s=0.02)

        async def watcher() -> list[int]:
            return [s.value or 0 async for s in feeds.follow("j")]

        watchers = [asyncio.create_task(watcher()) for _ in range(20)]
        for value in range(1, 6):
            await asyncio.sleep(0.1)
            state["value"] = value
            notifier.notify("j")
        seen = await asyncio.wait_for(asyncio.gather(*watchers), 10)
        assert feeds.watched() == 0
        return state["reads"], seen

    reads, seen = asyncio.run(scenario())
    assert all(s == [0, 1, 2, 3, 4, 5] for s in seen), seen
    assert reads <= 8  # one per change, not one per watcher and change (120)


def test_a_results_stream_ends_cleanly_when_its_job_is_deleted(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    store = manager.store
    store.create_job("j", "", "", "h", [NewTask("a", b"", 1), NewTask("b", b"", 1)])
    store.mark_running("j")
    grads = {"grad": {"x": np.ones(3)}}
    manifest = files.write_chunk(store.task_dir("j", 0), "compute-c00000", grads)
    store.finish_task("j", 0, [{**m, "files": [m["file"]]} for m in manifest], None, b"")

    async def scenario() -> tuple[list[pb.TaskResultPart], BaseException | None]:
        parts: list[pb.TaskResultPart] = []

        async def read() -> None:
            async for part in manager.results("j", 0):
                parts.append(await part.make() if isinstance(part, Later) else part)

        reader = asyncio.create_task(read())
        while len(parts) < 2:  # task 0's header and its one piece; task 1 is waited for
            await asyncio.sleep(0.01)
        deleted = await manager.delete("j")
        assert deleted.job.state == pb.JOB_STATE_CANCELLED and deleted.freed_bytes > 0
        done, _ = await asyncio.wait([reader], timeout=5)
        assert done, "the stream kept waiting for a deleted job"
        return parts, reader.exception()

    parts, error = asyncio.run(scenario())
    assert parts[0].header.task_id == "a" and len(parts[1].piece.data) == 24
    # the stream saw the job cancelled (deletion cancels first), or already gone
    if error is None:
        assert parts[-1].header.error.code == "CANCELLED"
    else:
        assert isinstance(error, ServiceError) and error.code.name == "NOT_FOUND", error
    assert store.get_job("j") is None and not (store.results_dir / "j").exists()
    store.close()
