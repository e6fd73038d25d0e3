"""Conversions for the job store: check reports to and from JSON, rows to protos."""

from __future__ import annotations

import dataclasses
from typing import Any

from gradserve.names import JOB_STATES
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.jobs import bounded
from gradserve_server.jobs.rows import JobRow
from gradserve_workers.report import CheckReport, Kink, WorstElement


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _build(cls: type, data: dict[str, Any]) -> Any:
    # only the fields this version knows: a report stored by an older or newer
    # server still loads (missing fields take their defaults)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _tuples(v) for k, v in data.items() if k in names})


def report_to_json(report: CheckReport) -> dict[str, Any]:
    return dataclasses.asdict(report)


def report_from_json(data: dict[str, Any]) -> CheckReport:
    data = dict(data)
    worst, kink = data.pop("worst", None), data.pop("kink", None)
    report: CheckReport = _build(CheckReport, data | {"worst": None, "kink": None})
    return dataclasses.replace(
        report,
        worst=_build(WorstElement, worst) if worst else None,
        kink=_build(Kink, kink) if kink else None,
    )


# Job.errors stops at this many bytes as well as at its count, so that a job
# proto, and a ListJobs page of them, stays far below the message limit.
MAX_ERRORS_BYTES = 256 << 10


def job_to_proto(row: JobRow, errors: list[tuple[int, str, str, str]]) -> pb.Job:
    echo = bounded.MAX_ECHO_CHARS
    job = pb.Job(
        id=bounded.clip(row.id, echo),
        name=bounded.clip(row.name, echo),
        state=JOB_STATES.get(row.state, pb.JOB_STATE_UNSPECIFIED),
        tasks_total=row.tasks_total,
        tasks_done=row.tasks_done,
        tasks_failed=row.tasks_failed,
        points_total=row.points_total,
        points_done=row.points_done,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        idempotency_key=bounded.clip(row.idempotency_key, echo),
    )
    used = 0
    for i, tid, code, msg in errors:
        error = pb.TaskError(task_index=i, task_id=tid, code=code, message=msg)
        used += error.ByteSize()
        if used > MAX_ERRORS_BYTES:
            break  # tasks_failed has the count
        job.errors.append(error)
    return job
