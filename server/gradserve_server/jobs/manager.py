"""The job manager: accepts jobs, runs them on the shared pool, and answers about them.

Lifecycle: ``queued`` until one of ``MAX_RUNNING_JOBS`` slots frees, then ``running``
until every task has finished; then ``succeeded`` when at least one task succeeded,
``failed`` when every task failed. ``cancelled`` stops dispatching and cancels the
chunks in flight (cancelling their asyncio tasks retires the workers running them).

Fairness comes from the pool: every chunk of a job is acquired under the job's id as
tenant, and the pool serves tenants round-robin, so a huge job takes turns with a
small job or a unary call that arrives after it. Within a job, ``slots`` bounds the
chunks dispatched or being stored at once.

Durability comes from the store: on start, jobs left ``queued`` or ``running`` are
resumed; their stored chunks are kept and only the rest run.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.config import ServerConfig
from gradserve_server.errors import ServiceError, invalid, not_found, unavailable
from gradserve_server.jobs import codec, files, results, spec, store
from gradserve_server.jobs.notify import Notifier
from gradserve_server.jobs.runner import TaskRunner
from gradserve_server.jobs.store import JobRow, JobStore, KeyConflict
from gradserve_server.service import ComputeService

log = logging.getLogger("gradserve.jobs")

MAX_RUNNING_JOBS = 4
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
# Job.errors lists at most this many failed tasks (tasks_failed has the count).
MAX_ERRORS = 1000
# WatchJob coalesces changes closer together than this into one event.
WATCH_INTERVAL_S = 0.1


class JobManager:
    def __init__(self, config: ServerConfig, service: ComputeService) -> None:
        self.config = config
        self.service = service
        self.store = JobStore(config.data_dir)
        self.notifier = Notifier()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._running: asyncio.Semaphore | None = None
        self._stopping = False

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Resume every job a previous server left unfinished."""
        self._running = asyncio.Semaphore(MAX_RUNNING_JOBS)
        removed = await asyncio.to_thread(files.remove_temporaries, self.store.results_dir)
        if removed:
            log.info("removed %d half-written result files", removed)
        active = await asyncio.to_thread(self.store.active_jobs)
        for job_id in active:
            self._launch(job_id)
        if active:
            log.info("resuming %d unfinished jobs", len(active))

    async def stop(self) -> None:
        """Stop running jobs where they are (a restart resumes them) and close the store."""
        self._stopping = True
        runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        self.store.close()

    def _launch(self, job_id: str) -> None:
        if job_id not in self._runs:
            self._runs[job_id] = asyncio.create_task(self._run_job(job_id), name=job_id)

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
                    self.service, self.store, job_id, slots, lambda: self.notifier.notify(job_id)
                )
                todo = [
                    i
                    for i, state in await asyncio.to_thread(self.store.task_states, job_id)
                    if state not in store.FINISHED
                ]
                # a few more tasks than chunk slots: binding and storing overlap compute
                tasks_at_once = asyncio.Semaphore(2 * self._inflight())

                async def one(idx: int) -> None:
                    async with tasks_at_once:
                        await runner.run(idx)

                async with asyncio.TaskGroup() as group:
                    for idx in todo:
                        group.create_task(one(idx))
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

    # ------------------------------------------------------------- RPCs

    def _job(self, job_id: str) -> JobRow:
        if self._stopping:
            # clients retry UNAVAILABLE: the SDK's wait() and results() ride out a restart
            raise unavailable("the server is shutting down; jobs resume when it restarts")
        row = self.store.get_job(job_id)
        if row is None:
            raise not_found(f"no job {job_id!r}")
        return row

    def _proto(self, row: JobRow) -> pb.Job:
        errors = self.store.errors(row.id, MAX_ERRORS) if row.tasks_failed else []
        return codec.job_to_proto(row, errors)

    async def submit(self, req: pb.SubmitJobRequest) -> pb.Job:
        tasks = spec.validate(req)
        if self._stopping:
            raise unavailable("the server is shutting down; submit again when it is back")

        async def store_and_launch() -> str:
            job_id, created = await asyncio.to_thread(
                self.store.create_job,
                f"job-{uuid.uuid4().hex[:16]}",
                req.name,
                req.idempotency_key,
                spec.spec_hash(req),
                tasks,
            )
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
        return self._proto(self._job(job_id))

    def get(self, job_id: str) -> pb.Job:
        return self._proto(self._job(job_id))

    def list(self, req: pb.ListJobsRequest) -> pb.ListJobsResponse:
        if self._stopping:
            raise unavailable("the server is shutting down")
        size = req.page_size or DEFAULT_PAGE_SIZE
        if size < 0:
            raise invalid("ListJobs: page_size must be positive", "page_size")
        size = min(size, MAX_PAGE_SIZE)
        states = []
        for number in req.states:
            if number not in codec.STATE_NAMES:
                raise invalid(f"ListJobs: unknown job state {number}", "states")
            states.append(codec.STATE_NAMES[number])
        before = _decode_token(req.page_token) if req.page_token else None
        rows = self.store.list_jobs(states, before, size + 1)
        resp = pb.ListJobsResponse(jobs=[self._proto(r) for r in rows[:size]])
        if len(rows) > size:
            resp.next_page_token = _encode_token(rows[size - 1].seq)
        return resp

    async def cancel(self, job_id: str) -> pb.Job:
        self._job(job_id)
        if await asyncio.to_thread(self.store.finish_job, job_id, store.CANCELLED):
            run = self._runs.get(job_id)
            if run is not None:
                run.cancel()
                # wait until its chunks are cancelled, so the reply means "stopped"
                await asyncio.wait([run], timeout=30)
            self.notifier.notify(job_id)
        return self.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[pb.JobEvent]:
        """The job now, then after every change, until it ends."""
        event = self.notifier.event(job_id)
        row = self._job(job_id)
        yield pb.JobEvent(job=self._proto(row), message=_describe(None, row))
        while row.state not in store.TERMINAL:
            await self.notifier.wait(event, timeout=5.0)
            await asyncio.sleep(WATCH_INTERVAL_S)  # let a burst of changes settle
            event = self.notifier.event(job_id)
            new = self._job(job_id)
            if new != row:
                yield pb.JobEvent(job=self._proto(new), message=_describe(row, new))
            row = new

    async def results(self, job_id: str, start_task: int) -> AsyncIterator[pb.TaskResultPart]:
        """Each task from ``start_task`` on, in order, as it finishes; ends with the job."""
        job = self._job(job_id)
        if start_task < 0:
            raise invalid("GetJobResults: start_task must be >= 0", "start_task")
        for idx in range(start_task, job.tasks_total):
            while True:
                event = self.notifier.event(job_id)
                row = self.store.task(job_id, idx)
                assert row is not None
                if row.state in store.FINISHED:
                    break
                job = self._job(job_id)
                if job.state in store.TERMINAL:
                    break  # cancelled before this task finished
                await self.notifier.wait(event, timeout=2.0)
            task_dir = self.store.task_dir(job_id, idx)
            async for part in results.stream_task(row, task_dir, job.state == store.CANCELLED):
                yield part


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
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
