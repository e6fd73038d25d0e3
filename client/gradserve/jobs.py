"""Handles on batch jobs: :class:`Job` for :class:`gradserve.Client`, :class:`AsyncJob`
for :class:`gradserve.AsyncClient`.

>>> job = client.submit("grading.yaml")                 # doctest: +SKIP
>>> job.wait(progress=True).state                       # doctest: +SKIP
'succeeded'
>>> for result in job.results():                        # doctest: +SKIP
...     print(result.task_id, result.error or result.check.passed)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING

import grpc

from gradserve._base import BaseClient
from gradserve.errors import DeadlineExceededError, UnavailableError, from_rpc_error
from gradserve.progress import ProgressBar
from gradserve.results import JobStatus, TaskResult
from gradserve.v1 import gradserve_pb2 as pb

if TYPE_CHECKING:
    from gradserve._async_client import AsyncClient
    from gradserve._client import Client

# A wait or a results stream rides out a server restart for this long.
RECONNECT_SECONDS = 60.0
_RETRY_PAUSE = 0.5


class _Grouper:
    """Turns a results stream (header, its pieces, header, ...) into TaskResults; the
    same for the sync and the async stream."""

    def __init__(self) -> None:
        self._header: pb.TaskResult | None = None
        self._pieces: list[pb.TensorPiece] = []

    def add(self, part: pb.TaskResultPart) -> TaskResult | None:
        """The previous task's result once the next header arrives."""
        if not part.HasField("header"):
            self._pieces.append(part.piece)
            return None
        done = self.finish()
        self._header, self._pieces = part.header, []
        return done

    def finish(self) -> TaskResult | None:
        if self._header is None:
            return None
        done = BaseClient._task_result(self._header, self._pieces)
        self._header, self._pieces = None, []
        return done


def _group(parts: Iterable[pb.TaskResultPart]) -> Iterator[TaskResult]:
    grouper = _Grouper()
    for part in parts:
        done = grouper.add(part)
        if done is not None:
            yield done
    last = grouper.finish()
    if last is not None:
        yield last


class _Reconnect:
    """What to do when a job's stream breaks: ride out a server restart (UNAVAILABLE)
    for up to RECONNECT_SECONDS, and a results stream the server closed because its
    reader fell behind (ABORTED: it resumes at its next task); raise anything else as
    the SDK's error. Shared by the sync and the async handles, which differ only in
    how they wait before retrying."""

    def __init__(self, job_id: str, timeout: float | None = None, resumable: bool = False) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.resumable = resumable
        self._since: float | None = None

    def delivered(self) -> None:
        """The stream is working again: a later outage gets the whole window."""
        self._since = None

    def check(self, error: grpc.RpcError) -> float:
        """Raise, or return how long the caller pauses before it retries."""
        code = error.code()  # type: ignore[attr-defined]
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and self.timeout is not None:
            raise DeadlineExceededError(
                f"job {self.job_id} did not finish within {self.timeout:g} s"
            ) from None
        resume = code is grpc.StatusCode.ABORTED and self.resumable
        if code is not grpc.StatusCode.UNAVAILABLE and not resume:
            raise from_rpc_error(error) from None
        first = self._since is None
        self._since = self._since or time.monotonic()
        if time.monotonic() - self._since > RECONNECT_SECONDS:
            if resume:
                raise from_rpc_error(error) from None
            raise UnavailableError(f"job {self.job_id}: {error.details()}") from None  # type: ignore[attr-defined]
        # a reader that fell behind resumes at once (it was delivered to until now)
        return 0.0 if resume and first else _RETRY_PAUSE


class Job:
    """A submitted job. Cheap to create: it holds the client and the id."""

    def __init__(self, client: Client, job_id: str) -> None:
        self._client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self, *, timeout: float | None = None) -> JobStatus:
        """The job's state and progress now."""
        c = self._client
        msg = c._call(c._stub.GetJob, pb.GetJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    def cancel(self, *, timeout: float | None = None) -> JobStatus:
        """Stop the job: no more chunks start and those running are cancelled."""
        c = self._client
        msg = c._call(c._stub.CancelJob, pb.CancelJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    def delete(self, *, timeout: float | None = None) -> JobStatus:
        """Delete the job and its results from the server (cancelling it first if it
        is still queued or running); its status as it was when deleted. Later calls
        on this job raise :class:`gradserve.NotFoundError`."""
        c = self._client
        msg = c._call(c._stub.DeleteJob, pb.DeleteJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg.job)

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobStatus:
        """Block until the job ends (following WatchJob); its final status.

        ``progress=True`` draws a progress bar on stderr. Raises
        :class:`gradserve.DeadlineExceededError` (a ``TimeoutError``) after ``timeout``
        seconds; rides out a server restart of up to a minute.
        """
        bar = ProgressBar() if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        reconnect = _Reconnect(self.id, timeout)
        c = self._client
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                for event in c._stub.WatchJob(
                    pb.WatchJobRequest(job_id=self.id), timeout=left, metadata=c._metadata
                ):
                    reconnect.delivered()
                    status = JobStatus._from_proto(event.job)
                    if bar is not None:
                        bar.update(status)
                    if status.done:
                        return status
            except grpc.RpcError as error:
                time.sleep(reconnect.check(error))

    def results(self, start_task: int = 0) -> Iterator[TaskResult]:
        """Each task's result in task order, as tasks finish (waits for running ones).

        Arrays stream in pieces; a dropped connection resumes at the next task.
        """
        c = self._client
        next_task = start_task
        reconnect = _Reconnect(self.id, resumable=True)
        while True:
            call = c._stub.GetJobResults(
                pb.GetJobResultsRequest(job_id=self.id, start_task=next_task),
                metadata=c._metadata,
            )
            try:
                for result in _group(call):
                    reconnect.delivered()
                    next_task = result.task_index + 1
                    yield result
                return
            except grpc.RpcError as error:
                pause = reconnect.check(error)
            finally:
                call.cancel()
            time.sleep(pause)


class AsyncJob:
    """A submitted job, for :class:`gradserve.AsyncClient`: the same methods, awaited."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self._client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def status(self, *, timeout: float | None = None) -> JobStatus:
        c = self._client
        msg = await c._call(c._stub.GetJob, pb.GetJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    async def cancel(self, *, timeout: float | None = None) -> JobStatus:
        c = self._client
        msg = await c._call(c._stub.CancelJob, pb.CancelJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    async def delete(self, *, timeout: float | None = None) -> JobStatus:
        c = self._client
        msg = await c._call(c._stub.DeleteJob, pb.DeleteJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg.job)

    async def wait(self, timeout: float | None = None, progress: bool = False) -> JobStatus:
        bar = ProgressBar() if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        reconnect = _Reconnect(self.id, timeout)
        c = self._client
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            call = c._stub.WatchJob(
                pb.WatchJobRequest(job_id=self.id), timeout=left, metadata=c._metadata
            )
            try:
                async for event in call:
                    reconnect.delivered()
                    status = JobStatus._from_proto(event.job)
                    if bar is not None:
                        bar.update(status)
                    if status.done:
                        return status
            except grpc.RpcError as error:
                pause = reconnect.check(error)
            finally:
                call.cancel()
            await asyncio.sleep(pause)

    async def results(self, start_task: int = 0) -> AsyncIterator[TaskResult]:
        """Each task's result in task order, as tasks finish (``async for``); a dropped
        connection, or a stream closed because its reader fell behind, resumes at the
        next task."""
        c = self._client
        next_task = start_task
        reconnect = _Reconnect(self.id, resumable=True)
        while True:
            call = c._stub.GetJobResults(
                pb.GetJobResultsRequest(job_id=self.id, start_task=next_task),
                metadata=c._metadata,
            )
            grouper = _Grouper()
            try:
                async for part in call:
                    done = grouper.add(part)
                    if done is not None:
                        reconnect.delivered()
                        next_task = done.task_index + 1
                        yield done
                last = grouper.finish()
                if last is not None:
                    yield last
                return
            except grpc.RpcError as error:
                pause = reconnect.check(error)
            finally:
                call.cancel()
            await asyncio.sleep(pause)


def job_states(states: Iterable[str] | str | None) -> list[pb.JobState]:
    """Job state names -> proto numbers, for ListJobs."""
    from gradserve.errors import InvalidArgumentError
    from gradserve.results import JOB_STATE_NUMBERS

    if states is None:
        return []
    names = [states] if isinstance(states, str) else list(states)
    out: list[pb.JobState] = []
    for name in names:
        if name not in JOB_STATE_NUMBERS or name == "unspecified":
            known = [n for n in JOB_STATE_NUMBERS if n != "unspecified"]
            raise InvalidArgumentError(f"jobs(states=...): unknown state {name!r}; use {known}")
        out.append(JOB_STATE_NUMBERS[name])
    return out
