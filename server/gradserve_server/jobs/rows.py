"""The job store's rows: what a query returns, decoded into dataclasses, and the
SELECTs that read them (see store.py for the tables)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradserve_server.jobs import bounded


@dataclass(frozen=True)
class JobRow:
    """A job with its progress, aggregated over its tasks."""

    seq: int
    id: str
    name: str
    state: str
    idempotency_key: str
    spec_hash: str
    created_at: float
    started_at: float
    finished_at: float
    tasks_total: int
    tasks_done: int  # finished: succeeded or failed
    tasks_failed: int
    points_total: int
    points_done: int


@dataclass(frozen=True)
class TaskRow:
    job_id: str
    idx: int
    task_id: str
    spec: bytes
    points: int
    state: str
    units_total: int
    units_done: int
    error_code: str | None
    error_message: str | None
    report: bytes | None
    metadata: bytes | None
    outputs: list[dict[str, Any]] | None  # the manifest written by finish_task
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class ChunkRow:
    task_idx: int
    phase: str
    chunk_idx: int
    start: int
    stop: int
    state: str
    executions: int
    files: list[dict[str, Any]] | None  # [{"op", "key", "file", "dtype", "shape"}]
    info: dict[str, Any] | None  # how it ran: vmapped, actor, seconds, report ...


@dataclass(frozen=True)
class NewTask:
    task_id: str
    spec: bytes
    points: int


class KeyConflict(Exception):
    """An idempotency key that is already used by a job with a different spec."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


JOB_SELECT = """
SELECT j.seq, j.id, j.name, j.state, j.idempotency_key, j.spec_hash, j.created_at,
       j.started_at, j.finished_at,
       COUNT(t.idx),
       COALESCE(SUM(t.state IN ('succeeded', 'failed')), 0),
       COALESCE(SUM(t.state = 'failed'), 0),
       COALESCE(SUM(t.points), 0),
       COALESCE(SUM(CASE
           WHEN t.state IN ('succeeded', 'failed') THEN t.points
           WHEN t.units_total > 0 THEN MIN(t.points, t.units_done * t.points / t.units_total)
           ELSE 0 END), 0)
FROM jobs j LEFT JOIN tasks t ON t.job_id = j.id
"""


def job_from_row(row: Sequence[Any]) -> JobRow:
    return JobRow(
        seq=int(row[0]),
        id=row[1],
        name=row[2],
        state=row[3],
        idempotency_key=unscoped_key(row[4] or ""),
        spec_hash=row[5],
        created_at=float(row[6]),
        started_at=float(row[7]),
        finished_at=float(row[8]),
        tasks_total=int(row[9]),
        tasks_done=int(row[10]),
        tasks_failed=int(row[11]),
        points_total=int(row[12]),
        points_done=int(row[13]),
    )


def clip_error(message: str) -> str:
    return bounded.clip(message, bounded.MAX_ERROR_CHARS)


def job_or_stand_in(row: Sequence[Any]) -> JobRow:
    """A job row, or for one that does not convert (written by something else), a
    stand-in that says so: one damaged row must not fail every listing."""
    try:
        return job_from_row(row)
    except (TypeError, ValueError, IndexError):
        return JobRow(
            seq=int(row[0]), id=str(row[1]), name="(this job's record is damaged)",
            state="unknown", idempotency_key="", spec_hash="", created_at=0.0,
            started_at=0.0, finished_at=0.0, tasks_total=0, tasks_done=0, tasks_failed=0,
            points_total=0, points_done=0,
        )  # fmt: skip


TASK_COLUMNS = (
    "job_id, idx, task_id, spec, points, state, units_total, units_done, error_code, "
    "error_message, report, metadata, outputs, started_at, finished_at"
)


def task_from_row(row: Sequence[Any]) -> TaskRow:
    return TaskRow(
        job_id=row[0],
        idx=int(row[1]),
        task_id=row[2],
        spec=bytes(row[3]),
        points=int(row[4]),
        state=row[5],
        units_total=int(row[6]),
        units_done=int(row[7]),
        error_code=row[8],
        error_message=row[9],
        report=bytes(row[10]) if row[10] is not None else None,
        metadata=bytes(row[11]) if row[11] is not None else None,
        outputs=json.loads(row[12]) if row[12] else None,
        started_at=float(row[13]),
        finished_at=float(row[14]),
    )


CHUNK_COLUMNS = "task_idx, phase, chunk_idx, start, stop, state, executions, files, info"


def chunk_from_row(row: Sequence[Any]) -> ChunkRow:
    return ChunkRow(
        task_idx=int(row[0]),
        phase=row[1],
        chunk_idx=int(row[2]),
        start=int(row[3]),
        stop=int(row[4]),
        state=row[5],
        executions=int(row[6]),
        files=json.loads(row[7]) if row[7] else None,
        info=json.loads(row[8]) if row[8] else None,
    )


# A tenant's idempotency keys are stored as TENANT + KEY_SEP + KEY (the column is
# UNIQUE across tenants); the default tenant's as they are, as before tenants.
KEY_SEP = "\x1f"


def scoped_key(tenant: str, key: str) -> str:
    return f"{tenant}{KEY_SEP}{key}" if key and tenant else key


def unscoped_key(stored: str) -> str:
    return stored.rpartition(KEY_SEP)[2]
