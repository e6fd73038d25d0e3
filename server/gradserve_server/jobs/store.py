"""The durable record of jobs: SQLite (WAL) in the data directory.

Three tables: ``jobs`` (one row per submission), ``tasks`` (the stored task spec,
its state, error, merged check report and output manifest) and ``chunks`` (the
chunk plan of each task, fixed when the task first runs, with each chunk's state,
result files and how many times it was dispatched). A chunk row says ``done`` only
after its result files are durable (see :mod:`.files`), so after a crash a done
chunk is never recomputed and a chunk that is not done is simply run again.

Every method is synchronous and takes the store's lock: the manager calls the
writing ones through ``asyncio.to_thread`` so that fsyncs never stall the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gradserve_server.jobs import bounded
from gradserve_server.jobs.rows import (
    CHUNK_COLUMNS,
    JOB_SELECT,
    TASK_COLUMNS,
    ChunkRow,
    JobRow,
    KeyConflict,
    NewTask,
    TaskRow,
    chunk_from_row,
    clip_error,
    job_or_stand_in,
    scoped_key,
    task_from_row,
)

SCHEMA_VERSION = 1
DB_NAME = "jobs.sqlite3"

# job states (the proto's JobState, by name)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled",
)  # fmt: skip
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# task states; a task is finished once it succeeded or failed
PENDING = "pending"
FINISHED = (SUCCEEDED, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    spec_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    spec BLOB NOT NULL,
    points INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    units_total INTEGER NOT NULL DEFAULT 0,
    units_done INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    report BLOB,
    metadata BLOB,
    outputs TEXT,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    task_idx INTEGER NOT NULL,
    phase TEXT NOT NULL,
    chunk_idx INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    executions INTEGER NOT NULL DEFAULT 0,
    files TEXT,
    info TEXT,
    PRIMARY KEY (job_id, task_idx, phase, chunk_idx)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""

# Result bytes per job, for the quotas (see quota.py): the estimate reserved at
# submission and the bytes actually written. Additive: an older database gains it.
_USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_usage (
    job_id TEXT PRIMARY KEY,
    estimate_bytes INTEGER NOT NULL DEFAULT 0,
    written_bytes INTEGER NOT NULL DEFAULT 0
);
"""


def _add_tenants(db: sqlite3.Connection) -> None:
    """Give a database made before tenants its ``tenant`` column: every job it
    holds belongs to the default tenant (what every caller was then)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
    if "tenant" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, seq)")


class JobStore:
    """SQLite in ``data_dir``, result files under ``data_dir/results``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.results_dir = self.data_dir / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # one connection shared by threads, serialised by the lock; autocommit mode
        # with explicit transactions, so a write is durable when its method returns
        self._db = sqlite3.connect(
            self.data_dir / DB_NAME, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsynced, so "done" survives a power cut, not only kill -9
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.data_dir / DB_NAME} has schema {version}, newer than this server's "
                f"{SCHEMA_VERSION}: use a newer gradserve or another --data-dir"
            )
        # a row written by anything but this server may hold bytes that are not
        # UTF-8: read them replaced rather than fail every query that touches them
        self._db.text_factory = lambda data: data.decode("utf-8", "replace")
        self._db.executescript(_SCHEMA)
        self._db.executescript(_USAGE_SCHEMA)
        _add_tenants(self._db)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def task_dir(self, job_id: str, idx: int) -> Path:
        return self.results_dir / job_id / f"t{idx:06d}"

    def _write(self, sql_batches: Iterable[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in sql_batches:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------- jobs

    def create_job(
        self,
        job_id: str,
        name: str,
        idempotency_key: str,
        spec_hash: str,
        tasks: Sequence[NewTask],
        tenant: str = "",
    ) -> tuple[str, bool]:
        """Insert a job and its tasks; (id, created). A known key returns its job
        (created False) when the spec matches and raises KeyConflict when not.
        Keys are the tenant's own: another tenant's equal key is another key."""
        now = time.time()
        idempotency_key = scoped_key(tenant, idempotency_key)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if idempotency_key:
                    row = self._db.execute(
                        "SELECT id, spec_hash FROM jobs WHERE idempotency_key = ?",
                        (idempotency_key,),
                    ).fetchone()
                    if row is not None:
                        self._db.execute("ROLLBACK")
                        if row[1] != spec_hash:
                            raise KeyConflict(row[0])
                        return row[0], False
                self._db.execute(
                    "INSERT INTO jobs (id, name, state, idempotency_key, spec_hash, created_at, "
                    "tenant) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, name, QUEUED, idempotency_key or None, spec_hash, now, tenant),
                )
                self._db.executemany(
                    "INSERT INTO tasks (job_id, idx, task_id, spec, points) VALUES (?, ?, ?, ?, ?)",
                    [(job_id, i, t.task_id, t.spec, t.points) for i, t in enumerate(tasks)],
                )
            except KeyConflict:
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return job_id, True

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._read(JOB_SELECT + " WHERE j.id = ? GROUP BY j.seq", (job_id,))
        return job_or_stand_in(rows[0]) if rows else None

    def list_jobs(
        self,
        states: Sequence[str],
        before_seq: int | None,
        limit: int,
        tenant: str | None = None,
    ) -> list[JobRow]:
        """Newest first; ``before_seq`` continues a listing after its last row;
        ``tenant``: only that tenant's jobs (None: everyone's)."""
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("j.tenant = ?")
            args.append(tenant)
        if states:
            where.append(f"j.state IN ({', '.join('?' * len(states))})")
            args += list(states)
        if before_seq is not None:
            where.append("j.seq < ?")
            args.append(before_seq)
        sql = JOB_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " GROUP BY j.seq ORDER BY j.seq DESC LIMIT ?"
        return [job_or_stand_in(r) for r in self._read(sql, (*args, limit))]

    def job_tenant(self, job_id: str) -> str | None:
        """The tenant that submitted the job (None: no such job)."""
        rows = self._read("SELECT tenant FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0][0]) if rows else None

    def count_by_state(self) -> dict[str, int]:
        return {
            r[0]: int(r[1]) for r in self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        }

    def active_jobs(self) -> list[str]:
        """Jobs to resume after a restart, oldest first."""
        rows = self._read(
            "SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY seq", (QUEUED, RUNNING)
        )
        return [r[0] for r in rows]

    def mark_running(self, job_id: str) -> None:
        self._write(
            [
                (
                    "UPDATE jobs SET state = ?, started_at = CASE WHEN started_at = 0 "
                    "THEN ? ELSE started_at END WHERE id = ? AND state IN (?, ?)",
                    (RUNNING, time.time(), job_id, QUEUED, RUNNING),
                )
            ]
        )

    def finish_job(self, job_id: str, state: str) -> bool:
        """Move an active job to a terminal state; False when it had already ended."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ? WHERE id = ? AND state IN (?, ?)",
                (state, time.time(), job_id, QUEUED, RUNNING),
            )
            return cur.rowcount > 0

    def errors(self, job_id: str, limit: int) -> list[tuple[int, str, str, str]]:
        """(task index, task id, code, message) of failed tasks, in task order.

        Texts are cut in SQL (see bounded.py), so a huge message stored by an older
        server is never read whole."""
        chars, echo = bounded.MAX_ERROR_READ_CHARS, bounded.MAX_ECHO_CHARS
        return [
            (
                int(r[0]),
                bounded.marked(r[1] or "", int(r[2] or 0), echo),
                bounded.clip(r[3] or "", echo),
                bounded.marked(r[4] or "", int(r[5] or 0), chars),
            )
            for r in self._read(
                "SELECT idx, substr(task_id, 1, ?), length(task_id), substr(error_code, 1, ?), "
                "substr(error_message, 1, ?), length(error_message) FROM tasks "
                "WHERE job_id = ? AND state = 'failed' ORDER BY idx LIMIT ?",
                (echo, echo, chars, job_id, limit),
            )
        ]

    # ------------------------------------------------------------- tasks

    def task(self, job_id: str, idx: int) -> TaskRow | None:
        rows = self._read(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND idx = ?", (job_id, idx)
        )
        return task_from_row(rows[0]) if rows else None

    def task_states(self, job_id: str) -> list[tuple[int, str]]:
        return [
            (int(r[0]), r[1])
            for r in self._read(
                "SELECT idx, state FROM tasks WHERE job_id = ? ORDER BY idx", (job_id,)
            )
        ]

    def start_task(
        self, job_id: str, idx: int, units_total: int, phase: str, ranges: Sequence[tuple[int, int]]
    ) -> list[ChunkRow]:
        """Mark a task running and fix a phase's chunk plan (kept if already planned, so
        a resumed task keeps the ranges its stored chunks cover); returns the plan."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE tasks SET state = ?, units_total = ?, started_at = CASE WHEN "
                    "started_at = 0 THEN ? ELSE started_at END WHERE job_id = ? AND idx = ?",
                    (RUNNING, units_total, time.time(), job_id, idx),
                )
                planned = self._db.execute(
                    "SELECT COUNT(*) FROM chunks WHERE job_id = ? AND task_idx = ? AND phase = ?",
                    (job_id, idx, phase),
                ).fetchone()[0]
                if not planned:
                    self._db.executemany(
                        "INSERT INTO chunks (job_id, task_idx, phase, chunk_idx, start, stop) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [(job_id, idx, phase, i, a, b) for i, (a, b) in enumerate(ranges)],
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return self.chunks(job_id, idx, phase)

    def finish_task(
        self,
        job_id: str,
        idx: int,
        outputs: list[dict[str, Any]],
        report: bytes | None,
        metadata: bytes,
    ) -> None:
        self._write(
            [
                (
                    "UPDATE tasks SET state = ?, outputs = ?, report = ?, metadata = ?, "
                    "units_done = units_total, finished_at = ? WHERE job_id = ? AND idx = ?",
                    (SUCCEEDED, json.dumps(outputs), report, metadata, time.time(), job_id, idx),
                )
            ]
        )

    def fail_task(self, job_id: str, idx: int, code: str, message: str) -> None:
        self._write(
            [
                (
                    "UPDATE tasks SET state = ?, error_code = ?, error_message = ?, "
                    "finished_at = ? WHERE job_id = ? AND idx = ?",
                    (FAILED, code, clip_error(message), time.time(), job_id, idx),
                )
            ]
        )

    # ------------------------------------------------------------- chunks

    def chunks(self, job_id: str, idx: int, phase: str | None = None) -> list[ChunkRow]:
        sql = f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = ? AND task_idx = ?"
        args: list[Any] = [job_id, idx]
        if phase is not None:
            sql += " AND phase = ?"
            args.append(phase)
        return [chunk_from_row(r) for r in self._read(sql + " ORDER BY phase, chunk_idx", args)]

    def begin_chunk(self, job_id: str, idx: int, phase: str, chunk_idx: int) -> None:
        """Count a dispatch before it happens: a recomputed chunk shows up as executions > 1."""
        self._write(
            [
                (
                    "UPDATE chunks SET executions = executions + 1 "
                    "WHERE job_id = ? AND task_idx = ? AND phase = ? AND chunk_idx = ?",
                    (job_id, idx, phase, chunk_idx),
                )
            ]
        )

    def finish_chunk(
        self,
        job_id: str,
        idx: int,
        phase: str,
        chunk_idx: int,
        files: list[dict[str, Any]],
        info: dict[str, Any],
        units: int,
    ) -> None:
        """Record a chunk done (its files must already be durable) and its progress.

        A chunk that lands after its job was cancelled is not recorded: the progress
        CancelJob reported is final (its thread could not be stopped mid-write)."""
        live = "AND (SELECT state FROM jobs WHERE id = ?) != ?"
        self._write(
            [
                (
                    "UPDATE chunks SET state = 'done', files = ?, info = ? "
                    "WHERE job_id = ? AND task_idx = ? AND phase = ? AND chunk_idx = ? "
                    f"AND state != 'done' {live}",
                    (
                        json.dumps(files),
                        json.dumps(info),
                        job_id,
                        idx,
                        phase,
                        chunk_idx,
                        job_id,
                        CANCELLED,
                    ),
                ),
                # changes(): rows the statement above changed, so progress counts only
                # a chunk that was recorded now (not one already done, nor a late one)
                (
                    "UPDATE tasks SET units_done = units_done + ? WHERE job_id = ? AND idx = ? "
                    "AND changes() > 0",
                    (units, job_id, idx),
                ),
            ]
        )

    # ------------------------------------------------------------- retention

    def job_state(self, job_id: str) -> str | None:
        """A job's state alone (no aggregation over its tasks); None when unknown."""
        rows = self._read("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0][0]) if rows else None

    def delete_job(self, job_id: str) -> bool:
        """Remove a job and its tasks, chunks and usage in one transaction (the
        caller removes its result files after); False when there was no such job."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                for table, column in (("tasks", "job_id"), ("chunks", "job_id")):
                    self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))
                self._db.execute("DELETE FROM job_usage WHERE job_id = ?", (job_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return cur.rowcount > 0

    def expired_jobs(self, finished_before: float, limit: int) -> list[str]:
        """Ended jobs that finished before ``finished_before``, oldest first."""
        rows = self._read(
            "SELECT id FROM jobs WHERE state IN (?, ?, ?) AND finished_at > 0 "
            "AND finished_at < ? ORDER BY finished_at LIMIT ?",
            (*TERMINAL, finished_before, limit),
        )
        return [r[0] for r in rows]

    def job_for_key(self, idempotency_key: str, tenant: str = "") -> str | None:
        rows = self._read(
            "SELECT id FROM jobs WHERE idempotency_key = ?", (scoped_key(tenant, idempotency_key),)
        )
        return str(rows[0][0]) if rows else None

    def job_ids(self) -> set[str]:
        return {r[0] for r in self._read("SELECT id FROM jobs")}

    # ------------------------------------------------------------- usage

    def reserve_usage(self, job_id: str, estimate_bytes: int, written_bytes: int = 0) -> None:
        """Record a new job's estimate, and ``written_bytes`` it already takes (its
        spec and report rows, counted as written: they stay until it is deleted)."""
        self._write(
            [
                (
                    "INSERT INTO job_usage (job_id, estimate_bytes, written_bytes) "
                    "VALUES (?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                    "estimate_bytes = excluded.estimate_bytes, "
                    "written_bytes = excluded.written_bytes",
                    (job_id, estimate_bytes, written_bytes),
                )
            ]
        )

    def add_written(self, job_id: str, nbytes: int) -> None:
        self._write(
            [
                (
                    # (nothing for a job deleted meanwhile)
                    "INSERT INTO job_usage (job_id, written_bytes) "
                    "SELECT ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET written_bytes = written_bytes + ?",
                    (job_id, nbytes, job_id, nbytes),
                )
            ]
        )

    def usage(self, job_id: str) -> tuple[int, int]:
        """(estimate, written) bytes of one job; zeros when nothing was recorded."""
        rows = self._read(
            "SELECT estimate_bytes, written_bytes FROM job_usage WHERE job_id = ?", (job_id,)
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def claimed_bytes(self, tenant: str | None = None) -> int:
        """The bytes the server stands behind: what ended jobs wrote, and for active
        jobs the larger of their estimate and what they wrote so far. ``tenant``: that
        tenant's jobs only (None: everyone's)."""
        where, args = ("WHERE j.tenant = ?", [tenant]) if tenant is not None else ("", [])
        rows = self._read(
            "SELECT COALESCE(SUM(CASE WHEN j.state IN (?, ?) "
            "THEN MAX(u.estimate_bytes, u.written_bytes) ELSE u.written_bytes END), 0) "
            f"FROM job_usage u JOIN jobs j ON j.id = u.job_id {where}",
            [*ACTIVE, *args],
        )
        return int(rows[0][0])

    def active_count(self, tenant: str) -> int:
        """How many of ``tenant``'s jobs are queued or running."""
        rows = self._read(
            "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state IN (?, ?)", (tenant, *ACTIVE)
        )
        return int(rows[0][0])
