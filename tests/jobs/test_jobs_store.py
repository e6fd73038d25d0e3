"""The job store on its own: SQLite bookkeeping, atomic result files, resume state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.errors import ServiceError
from gradserve_server.jobs import codec, files, spec
from gradserve_server.jobs.results import build_outputs
from gradserve_server.jobs.rows import KeyConflict, NewTask
from gradserve_server.jobs.store import JobStore
from gradserve_workers.report import CheckReport, Kink, WorstElement


def _tasks(n: int, points: int = 10) -> list[NewTask]:
    return [NewTask(f"t{i}", b"spec", points) for i in range(n)]


def test_create_get_and_idempotency_key(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id, created = store.create_job("job-a", "first", "key-1", "hash-1", _tasks(3))
    assert (job_id, created) == ("job-a", True)
    row = store.get_job("job-a")
    assert row is not None
    assert (row.state, row.tasks_total, row.points_total, row.points_done) == ("queued", 3, 30, 0)
    # the same key and spec: the same job, nothing new stored
    assert store.create_job("job-b", "again", "key-1", "hash-1", _tasks(3)) == ("job-a", False)
    assert store.get_job("job-b") is None
    with pytest.raises(KeyConflict) as info:
        store.create_job("job-c", "other", "key-1", "hash-2", _tasks(1))
    assert info.value.job_id == "job-a"
    assert store.get_job("nope") is None


def test_state_changes_and_terminal_states_stick(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.create_job("j", "", "", "h", _tasks(1))
    store.mark_running("j")
    row = store.get_job("j")
    assert row is not None and row.state == "running" and row.started_at > 0
    assert store.finish_job("j", "cancelled")
    assert not store.finish_job("j", "succeeded")  # an ended job stays ended
    store.mark_running("j")
    row = store.get_job("j")
    assert row is not None and row.state == "cancelled" and row.finished_at > 0
    assert store.active_jobs() == []


def test_chunk_plan_survives_reopen_and_progress_is_counted(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.create_job("j", "", "", "h", [NewTask("a", b"s", 100), NewTask("b", b"s", 5)])
    chunks = store.start_task("j", 0, 100, "compute", [(0, 50), (50, 100)])
    assert [(c.start, c.stop, c.state) for c in chunks] == [
        (0, 50, "pending"),
        (50, 100, "pending"),
    ]
    store.begin_chunk("j", 0, "compute", 0)
    store.finish_chunk("j", 0, "compute", 0, [], {"actor": "w1"}, 50)
    store.begin_chunk("j", 0, "compute", 1)  # dispatched, then the server died
    store.close()

    store = JobStore(tmp_path)  # a restart
    assert store.active_jobs() == ["j"]
    # a different plan offered on resume does not replace the stored one
    again = store.start_task("j", 0, 100, "compute", [(0, 10), (10, 100)])
    assert [(c.start, c.stop) for c in again] == [(0, 50), (50, 100)]
    assert [(c.state, c.executions) for c in again] == [("done", 1), ("pending", 1)]
    row = store.get_job("j")
    assert row is not None and (row.points_done, row.points_total) == (50, 105)
    store.fail_task("j", 1, "INVALID_ARGUMENT", "bad")
    row = store.get_job("j")
    assert row is not None
    assert (row.tasks_done, row.tasks_failed, row.points_done) == (1, 1, 55)
    assert store.errors("j", 10) == [(1, "b", "INVALID_ARGUMENT", "bad")]


def test_list_jobs_newest_first_with_paging_and_filter(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    for i in range(5):
        store.create_job(f"j{i}", "", "", "h", _tasks(1))
    store.finish_job("j1", "cancelled")
    first = store.list_jobs([], None, 2)
    assert [r.id for r in first] == ["j4", "j3"]
    assert [r.id for r in store.list_jobs([], first[-1].seq, 2)] == ["j2", "j1"]
    assert [r.id for r in store.list_jobs(["cancelled"], None, 10)] == ["j1"]
    assert [r.id for r in store.list_jobs(["queued", "running"], None, 10)] == [
        "j4",
        "j3",
        "j2",
        "j0",
    ]


def test_chunk_files_are_atomic_and_stream_back_in_pieces(tmp_path: Path) -> None:
    grad = np.arange(24, dtype=np.float64).reshape(6, 4)
    hess = np.ones((6, 2, 2), dtype=np.float32)
    manifest = files.write_chunk(
        tmp_path / "t0", "compute-c00000", {"grad": {"x": grad}, "hessian": {"a,b": hess}}
    )
    assert [(m["op"], m["key"], m["dtype"], m["shape"]) for m in manifest] == [
        ("grad", "x", "float64", [6, 4]),
        ("hessian", "a,b", "float32", [6, 2, 2]),
    ]
    assert not list(tmp_path.rglob("*" + files.TMP_SUFFIX))
    reader = files.NpyReader(tmp_path / "t0" / manifest[0]["file"])
    data = b"".join(iter(lambda: reader.next_piece(40), b""))
    reader.close()
    assert np.array_equal(np.frombuffer(data, dtype="<f8").reshape(6, 4), grad)


def test_a_torn_write_leaves_only_a_temporary_that_is_cleaned(tmp_path: Path) -> None:
    (tmp_path / "t0").mkdir()
    final = tmp_path / "t0" / "compute-c00000-000.npy"
    (tmp_path / "t0" / (final.name + files.TMP_SUFFIX)).write_bytes(b"\x93NUMPY half")
    assert not final.exists()
    assert files.remove_temporaries(tmp_path) == 1
    assert not any(tmp_path.rglob("*" + files.TMP_SUFFIX))


def test_output_manifest_stacks_chunks_along_points() -> None:
    from gradserve_server.jobs.rows import ChunkRow

    def chunk(i: int, rows: int) -> ChunkRow:
        entry = {
            "op": "grad",
            "key": "",
            "file": f"c{i}.npy",
            "dtype": "float64",
            "shape": [rows, 3],
        }
        return ChunkRow(0, "compute", i, 0, rows, "done", 1, [entry], {})

    (out,) = build_outputs([chunk(0, 4), chunk(1, 2)])
    assert out["shape"] == [6, 3] and out["files"] == ["c0.npy", "c1.npy"]


def test_check_report_round_trips_through_json() -> None:
    report = CheckReport(
        passed=False,
        kind="claimed_grad",
        order=1,
        mode="full",
        max_abs_error=1.0,
        max_rel_error=0.5,
        worst=WorstElement(3, "x", (), (1,), 2.0, 3.0, 1.0, 0.5),
        non_differentiable=True,
        symmetric=None,
        point_passed=(True, False),
        message="m",
        atol=1e-5,
        rtol=1e-3,
        eps=1e-6,
        num_points=2,
        vmapped=True,
        kink=Kink(1, "x", (), (0,), 0.0, 1.0, -1.0, 0.0),
    )
    assert codec.report_from_json(codec.report_to_json(report)) == report


def test_job_spec_validation_refuses_malformed_jobs() -> None:
    def task(**kw: object) -> pb.Task:
        t = pb.Task(function="sum(x)", **{"ops": [pb.OP_GRAD], **kw})  # type: ignore[arg-type]
        t.inputs["x"].tensor.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[1], data=bytes(8)))
        return t

    with pytest.raises(ServiceError, match="no tasks"):
        spec.validate(pb.SubmitJobRequest())
    with pytest.raises(ServiceError, match="already used by task 0"):
        spec.validate(pb.SubmitJobRequest(tasks=[task(id="a"), task(id="a")]))
    with pytest.raises(ServiceError, match="unknown operation number 42"):
        spec.validate(pb.SubmitJobRequest(tasks=[task(ops=[42])]))
    with pytest.raises(ServiceError, match="nothing to do"):
        spec.validate(pb.SubmitJobRequest(tasks=[task(ops=[])]))
    tasks = spec.validate(pb.SubmitJobRequest(tasks=[task(), task(id="b")]))
    assert [t.task_id for t in tasks] == ["0", "b"]
    a = pb.SubmitJobRequest(tasks=[task()], idempotency_key="k1")
    b = pb.SubmitJobRequest(tasks=[task()], idempotency_key="k2")
    assert spec.spec_hash(a) == spec.spec_hash(b)
