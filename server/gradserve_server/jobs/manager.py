"""The job manager: accepts jobs, runs them on the shared pool, and answers about them.

Lifecycle: ``queued`` until one of ``MAX_RUNNING_JOBS`` slots frees, then ``running``
until every task has finished; then ``succeeded`` when at least one task succeeded,
``failed`` when every task failed. ``cancelled`` stops dispatching and cancels the
chunks in flight (cancelling their asyncio tasks retires the workers running them).

Fairness comes from the pool: every chunk of a job is acquired under its tenant and
the job's id, and the pool serves tenants round-robin and each tenant's jobs and calls
in turn, so a huge job takes turns with a small job or a unary call that arrives
after it, and a tenant with many jobs gets no more turns than a tenant with one.
Within a job, ``slots`` bounds the chunks dispatched or being stored at once.

Durability comes from the store: on start, jobs left ``queued`` or ``running`` are
resumed; their stored chunks are kept and only the rest run.

Bounds: sizes and result quotas are checked from the spec before a job is stored
(spec.py, quota.py); every store read runs off the event loop; watchers of a job
share one reader (feed.py); ended jobs are deleted by DeleteJob or, after
``--job-ttl``, by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from gradserve.names import JOB_STATE_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.budgets import Budgets
from gradserve_server.config import ServerConfig
from gradserve_server.errors import ServiceError, invalid, not_found, unavailable
from gradserve_server.jobs import bounded, codec, files, quota, results, spec, store
from gradserve_server.jobs.feed import Feeds
from gradserve_server.jobs.notify import Notifier
from gradserve_server.jobs.quota import Quotas
from gradserve_server.jobs.rows import JobRow, KeyConflict, NewTask
from gradserve_server.jobs.runner import TaskRunner
from gradserve_server.jobs.store import JobStore
from gradserve_server.pool import pool_key
from gradserve_server.service import ComputeService
from gradserve_server.streams import Later

log = logging.getLogger("gradserve.jobs")

MAX_RUNNING_JOBS = 4
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
# Job.errors lists at most this many failed tasks (tasks_failed has the count).
MAX_ERRORS = 1000
# A ListJobs page ends at this many bytes (or half the message limit) as well as
# at its page size, so no page can grow past the message limit.
LIST_PAGE_BYTES = 4 << 20
# The retention sweep runs at most this far apart, and reads expired jobs this many
# at a time.
SWEEP_INTERVAL_S = 60.0
SWEEP_BATCH = 100
STOPPING = "the server is shutting down; jobs resume when it restarts"
# WatchJob coalesces changes closer together than this into one event.
WATCH_INTERVAL_S = 0.1


class JobManager:
    def __init__(self, config: ServerConfig, service: ComputeService) -> None:
        self.config = config
        self.service = service
        self.store = JobStore(config.data_dir)
        self.notifier = Notifier()
        budgets = Budgets.from_config(config)
        self.quotas = Quotas(
            self.store, budgets.job_bytes, budgets.stored_bytes, budgets.tenant_stored_bytes,
            config.max_active_jobs_per_tenant,
        )  # fmt: skip
        self.feeds: Feeds[tuple[JobRow, pb.Job]] = Feeds(
            self.notifier, self._feed_read, WATCH_INTERVAL_S
        )
        self.bounds = spec.SizeBounds.of(config, budgets)
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._running: asyncio.Semaphore | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Resume every job a previous server left unfinished; start the retention sweep."""
        self._running = asyncio.Semaphore(MAX_RUNNING_JOBS)
        removed = await asyncio.to_thread(files.remove_temporaries, self.store.results_dir)
        if removed:
            log.info("removed %d half-written result files", removed)
        await self.sweep()
        active = await asyncio.to_thread(self.store.active_jobs)
        for job_id in active:
            self._launch(job_id)
        if active:
            log.info("resuming %d unfinished jobs", len(active))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="job-retention")

    async def halt(self) -> None:
        """Stop running jobs where they are (a restart resumes them) and end every
        watch with UNAVAILABLE, so that neither holds the server's drain. The store
        stays open for the calls still draining; :meth:`stop` closes it."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.feeds.close(unavailable(STOPPING))
        runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, *filter(None, [self._sweeper]), return_exceptions=True)

    async def stop(self) -> None:
        """Halt (if not yet) and close the store: after the calls have drained."""
        await self.halt()
        self.store.close()

    def _launch(self, job_id: str) -> None:
        if job_id not in self._runs:
            # a context of its own: not the SubmitJob call's (its request id, caller)
            self._runs[job_id] = asyncio.create_task(
                self._run_job(job_id), name=job_id, context=contextvars.Context()
            )

    def _inflight(self) -> int:
        configured = self.config.max_inflight_chunks_per_job
        # twice the workers by default: a slot is held while a chunk is stored too
        return configured if configured > 0 else 2 * max(1, len(self.service.pool.workers))

    async def _run_job(self, job_id: str) -> None:
        assert self._running is not None
        try:
            async with self._running:
                await asyncio.to_thread(self.store.mark_running, job_id)
                self.notifier.notify(job_id)
                slots = asyncio.Semaphore(self._inflight())
                runner = TaskRunner(
                    self.service, self.store, job_id, slots, lambda: self.notifier.notify(job_id),
                    self.quotas,
                )  # fmt: skip
                runner.pool_key = await asyncio.to_thread(self._pool_key, job_id)
                todo = [
                    i
                    for i, state in await asyncio.to_thread(self.store.task_states, job_id)
                    if state not in store.FINISHED
                ]
                # a few more tasks than chunk slots (binding and storing overlap compute),
                # each taken by one of a fixed set of workers: a 100,000-task job costs
                # a handful of asyncio tasks, not one per task
                pending = iter(todo)

                async def work() -> None:
                    for idx in pending:
                        await runner.run(idx)

                async with asyncio.TaskGroup() as group:
                    for _ in range(min(len(todo), 2 * self._inflight())):
                        group.create_task(work())
                states = [s for _, s in await asyncio.to_thread(self.store.task_states, job_id)]
                final = store.SUCCEEDED if store.SUCCEEDED in states else store.FAILED
                await asyncio.to_thread(self.store.finish_job, job_id, final)
        except asyncio.CancelledError:
            # cancelled by CancelJob (the state is already set) or by stop() (the job
            # stays active in the store and resumes on the next start)
            raise
        except Exception:
            log.exception("job %s stopped by an internal error", job_id)
            if not self._stopping:
                await asyncio.to_thread(self.store.finish_job, job_id, store.FAILED)
        finally:
            self._runs.pop(job_id, None)
            if not self._stopping:
                self.notifier.notify(job_id)

    async def _stop_run(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel()
            # wait until its chunks are cancelled, so the reply means "stopped"
            await asyncio.wait([run], timeout=30)

    def _pool_key(self, job_id: str) -> str:
        # the job's chunks take turns within its tenant's turn (see pool.py)
        return pool_key(self.store.job_tenant(job_id) or "", job_id)

    # ------------------------------------------------------------- reading

    def _read(self, job_id: str) -> tuple[JobRow, pb.Job] | None:
        """The job and its proto (blocking: call through asyncio.to_thread)."""
        row = self.store.get_job(job_id)
        if row is None:
            return None
        errors = self.store.errors(row.id, MAX_ERRORS) if row.tasks_failed else []
        return row, codec.job_to_proto(row, errors)

    async def _read_or_raise(self, job_id: str) -> tuple[JobRow, pb.Job]:
        if self._stopping:
            # clients retry UNAVAILABLE: the SDK's wait() and results() ride out a restart
            raise unavailable(STOPPING)
        found = await asyncio.to_thread(self._read, job_id)
        if found is None:
            raise not_found(f"no job {bounded.clip(job_id, bounded.MAX_ECHO_CHARS)!r}")
        return found

    async def _feed_read(self, job_id: str) -> tuple[tuple[JobRow, pb.Job] | None, bool]:
        if self._stopping:
            raise unavailable(STOPPING)
        found = await asyncio.to_thread(self._read, job_id)
        return found, found is None or found[0].state in store.TERMINAL

    # ------------------------------------------------------------- RPCs

    async def submit(self, req: pb.SubmitJobRequest, tenant: str = "") -> pb.Job:
        if self._stopping:
            raise unavailable("the server is shutting down; submit again when it is back")
        spec.check_counts(req)  # before any per-task work

        def prepare() -> tuple[list[NewTask], quota.Estimate, str]:
            return spec.validate(req, self.bounds), quota.estimate(req.tasks), spec.spec_hash(req)

        # CPU-bound for 100,000 tasks: off the event loop, which keeps serving
        tasks, estimate, spec_hash = await asyncio.to_thread(prepare)

        def admit_and_create() -> tuple[str, bool]:
            def create() -> tuple[str, bool]:
                return self.store.create_job(
                    f"job-{uuid.uuid4().hex[:16]}", req.name, req.idempotency_key, spec_hash,
                    tasks, tenant,
                )  # fmt: skip

            if req.idempotency_key and self.store.job_for_key(req.idempotency_key, tenant):
                return create()  # a retry: its job is stored (or the key conflicts)
            return self.quotas.admit(estimate, create, tenant)

        async def store_and_launch() -> str:
            job_id, created = await asyncio.to_thread(admit_and_create)
            if created:
                self._launch(job_id)
            return job_id

        try:
            # shielded: a caller that goes away mid-submit must not leave a stored job
            # that nothing runs
            job_id = await asyncio.shield(store_and_launch())
        except KeyConflict as conflict:
            raise ServiceError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"SubmitJob: the idempotency key {req.idempotency_key!r} belongs to job "
                f"{conflict.job_id}, which was submitted with a different spec",
                field="idempotency_key",
            ) from None
        return (await self._read_or_raise(job_id))[1]

    async def get(self, job_id: str) -> pb.Job:
        return (await self._read_or_raise(job_id))[1]

    async def list(self, req: pb.ListJobsRequest, tenant: str | None = None) -> pb.ListJobsResponse:
        """``tenant``: only that tenant's jobs (None: everyone's)."""
        if self._stopping:
            raise unavailable("the server is shutting down")
        size = req.page_size or DEFAULT_PAGE_SIZE
        if size < 0:
            raise invalid("ListJobs: page_size must be positive", "page_size")
        size = min(size, MAX_PAGE_SIZE)
        if len(req.states) > len(JOB_STATE_BY_NUMBER):
            raise invalid("ListJobs: more states than there are; name each at most once", "states")
        states = []
        for number in req.states:
            if number not in JOB_STATE_BY_NUMBER:
                raise invalid(f"ListJobs: unknown job state {number}", "states")
            states.append(JOB_STATE_BY_NUMBER[number])
        before = _decode_token(req.page_token) if req.page_token else None
        budget = min(LIST_PAGE_BYTES, self.config.max_message_bytes // 2)
        return await asyncio.to_thread(self._page, states, before, size, budget, tenant)

    def _page(
        self,
        states: Sequence[str],
        before: int | None,
        size: int,
        budget: int,
        tenant: str | None,
    ) -> pb.ListJobsResponse:
        """Up to ``size`` jobs and about ``budget`` bytes: whichever comes first ends
        the page (a page always holds one job; one job is far below the budget)."""
        rows = self.store.list_jobs(states, before, size + 1, tenant)
        resp = pb.ListJobsResponse()
        used = 0
        for row in rows[:size]:
            errors = self.store.errors(row.id, MAX_ERRORS) if row.tasks_failed else []
            job = codec.job_to_proto(row, errors)
            used += job.ByteSize() + 8
            if resp.jobs and used > budget:
                break
            resp.jobs.append(job)
        if len(rows) > len(resp.jobs):
            resp.next_page_token = _encode_token(rows[len(resp.jobs) - 1].seq)
        return resp

    async def cancel(self, job_id: str) -> pb.Job:
        await self._read_or_raise(job_id)
        if await asyncio.to_thread(self.store.finish_job, job_id, store.CANCELLED):
            await self._stop_run(job_id)
            self.notifier.notify(job_id)
        return await self.get(job_id)

    async def delete(self, job_id: str) -> pb.DeleteJobResponse:
        """Cancel the job if it is active, then remove it and its result files."""
        row, job = await self._read_or_raise(job_id)
        if row.state in store.ACTIVE:
            job = await self.cancel(job_id)
        await self._stop_run(job_id)
        if not await asyncio.to_thread(self.store.delete_job, job_id):
            raise not_found(f"no job {job_id!r} (it was deleted meanwhile)")
        self.notifier.notify(job_id)  # followers see it gone
        freed = await asyncio.to_thread(self._remove_files, job_id)
        log.info("deleted job %s (%s), %d result bytes", job_id, row.state, freed)
        return pb.DeleteJobResponse(job=job, freed_bytes=freed)

    def _remove_files(self, job_id: str) -> int:
        path = self.store.results_dir / job_id
        freed = quota.tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        return freed

    async def watch(self, job_id: str) -> AsyncIterator[pb.JobEvent]:
        """The job now, then after every change, until it ends. Every watcher of a job
        shares one reader (see feed.py)."""
        await self._read_or_raise(job_id)
        previous: JobRow | None = None
        async for snapshot in self.feeds.follow(job_id):
            if snapshot.value is None:
                raise not_found(f"job {job_id!r} was deleted")
            row, job = snapshot.value
            if previous is None or row != previous:
                yield pb.JobEvent(job=job, message=_describe(previous, row))
            previous = row

    async def results(
        self, job_id: str, start_task: int
    ) -> AsyncIterator[pb.TaskResultPart | Later]:
        """Each task from ``start_task`` on, in order, as it finishes; ends with the job.
        Waiting for a task holds nothing; pieces are read once the stream has room."""
        row, _ = await self._read_or_raise(job_id)
        if start_task < 0:
            raise invalid("GetJobResults: start_task must be >= 0", "start_task")
        state: str | None = row.state
        gone = f"job {job_id!r} was deleted while its results were read"
        for idx in range(start_task, row.tasks_total):
            while True:
                event = self.notifier.event(job_id)
                task = await asyncio.to_thread(self.store.task, job_id, idx)
                if task is None:
                    raise not_found(gone)
                if task.state in store.FINISHED:
                    break
                state = await asyncio.to_thread(self.store.job_state, job_id)
                if state is None:
                    raise not_found(gone)
                if state in store.TERMINAL:
                    break  # cancelled before this task finished
                if self._stopping:
                    raise unavailable(STOPPING)
                await self.notifier.wait(event, timeout=2.0)
            task_dir = self.store.task_dir(job_id, idx)
            try:
                async for part in results.stream_task(task, task_dir, state == store.CANCELLED):
                    yield (
                        self._read_guarded(part, job_id, gone) if isinstance(part, Later) else part
                    )
            except (OSError, ValueError):
                await self._raise_if_deleted(job_id, gone)
                raise

    def _read_guarded(self, piece: Later, job_id: str, gone: str) -> Later:
        """``piece``, whose read (made later, by the stream) fails as NOT_FOUND if the
        job was deleted meanwhile."""

        async def make() -> Any:
            try:
                return await piece.make()
            except (OSError, ValueError):
                await self._raise_if_deleted(job_id, gone)
                raise

        return Later(make)

    async def _raise_if_deleted(self, job_id: str, gone: str) -> None:
        if await asyncio.to_thread(self.store.job_state, job_id) is None:
            raise not_found(gone) from None

    # ------------------------------------------------------------- retention

    async def _sweep_forever(self) -> None:
        ttl = self.config.job_ttl_s
        interval = max(0.5, min(SWEEP_INTERVAL_S, ttl / 4)) if ttl else SWEEP_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("the job retention sweep failed; it runs again in %g s", interval)

    async def sweep(self) -> int:
        """Delete jobs that ended more than --job-ttl ago, and result directories no
        job owns (a crash between a deletion and its files); how many jobs."""
        deleted = 0
        cutoff = time.time() - self.config.job_ttl_s
        while self.config.job_ttl_s and not self._stopping:
            batch = await asyncio.to_thread(self.store.expired_jobs, cutoff, SWEEP_BATCH)
            before = deleted
            for job_id in batch:
                try:
                    await self.delete(job_id)
                    deleted += 1
                except ServiceError:
                    continue  # deleted meanwhile, or the server is stopping
            if len(batch) < SWEEP_BATCH or deleted == before:
                break
        orphans = await asyncio.to_thread(self._orphan_dirs)
        for path in orphans:
            await asyncio.to_thread(shutil.rmtree, path, True)
        if deleted or orphans:
            log.info("retention: deleted %d expired jobs, %d orphaned result dirs",
                     deleted, len(orphans))  # fmt: skip
        return deleted

    def _orphan_dirs(self) -> Sequence[Path]:
        # directories first: a directory exists only after its job's row was stored
        dirs = [p for p in self.store.results_dir.iterdir() if p.is_dir()]
        known = self.store.job_ids() | set(self._runs)
        return [p for p in dirs if p.name not in known]


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        if len(token) > 64:  # ours are about 20 characters: nothing longer is decoded
            raise ValueError(len(token))
        text = base64.urlsafe_b64decode(token.encode()).decode()
        version, _, seq = text.partition(":")
        if version != "v1" or not seq.isdigit() or len(seq) > 18:
            raise ValueError(version)  # an int64 (SQLite's integers) and nothing else
        return int(seq)
    except (ValueError, UnicodeDecodeError):
        raise invalid("ListJobs: page_token is not one this server issued", "page_token") from None


def _describe(old: JobRow | None, new: JobRow) -> str:
    progress = (
        f"{new.tasks_done}/{new.tasks_total} tasks ({new.tasks_failed} failed), "
        f"{new.points_done}/{new.points_total} points"
    )
    if old is None or old.state != new.state:
        return f"{new.state}: {progress}"
    return progress
