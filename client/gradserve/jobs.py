"""Handles on batch jobs: :class:`Job` for :class:`gradserve.Client`, :class:`AsyncJob`
for :class:`gradserve.AsyncClient`. A handle holds its client's connection and the
job's id; the two behave alike (a test runs the same scenarios through both).

>>> job = client.submit("grading.yaml")                 # doctest: +SKIP
>>> job.wait(progress=True).state                       # doctest: +SKIP
'succeeded'
>>> for result in job.results():                        # doctest: +SKIP
...     print(result.task_id, result.error or result.check.passed)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

from gradserve._core import ResultGrouper
from gradserve._reconnect import Reconnect
from gradserve._rpc import AsyncRpc, SyncRpc
from gradserve.errors import GradserveError
from gradserve.progress import ProgressBar
from gradserve.results import JobStatus, TaskResult
from gradserve.v1 import gradserve_pb2 as pb


def _time_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Job:
    """A submitted job. Cheap to create: it holds the connection and the id."""

    def __init__(self, rpc: SyncRpc, job_id: str) -> None:
        self._rpc = rpc
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self, *, timeout: float | None = None) -> JobStatus:
        """The job's state and progress now."""
        msg = self._rpc.get_job(pb.GetJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    def cancel(self, *, timeout: float | None = None) -> JobStatus:
        """Stop the job: no more chunks start and those running are cancelled."""
        msg = self._rpc.cancel_job(pb.CancelJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    def delete(self, *, timeout: float | None = None) -> JobStatus:
        """Delete the job and its results from the server (cancelling it first if it
        is still queued or running); its status as it was when deleted. Later calls
        on this job raise :class:`gradserve.NotFoundError`."""
        msg = self._rpc.delete_job(pb.DeleteJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg.job)

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobStatus:
        """Block until the job ends (following WatchJob); its final status.

        ``progress=True`` draws a progress bar on stderr. Raises
        :class:`gradserve.DeadlineExceededError` (a ``TimeoutError``) after ``timeout``
        seconds; rides out a server restart of up to a minute.
        """
        bar = ProgressBar() if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        reconnect = Reconnect(self.id, timeout)
        request = pb.WatchJobRequest(job_id=self.id)
        while True:
            try:
                with contextlib.closing(
                    self._rpc.watch_job(request, _time_left(deadline))
                ) as events:
                    for event in events:
                        reconnect.delivered()
                        status = JobStatus._from_proto(event.job)
                        if bar is not None:
                            bar.update(status)
                        if status.done:
                            return status
            except GradserveError as error:
                time.sleep(reconnect.pause(error))

    def results(self, start_task: int = 0) -> Iterator[TaskResult]:
        """Each task's result in task order, as tasks finish (waits for running ones).

        Arrays stream in pieces; a dropped connection, or a stream closed because its
        reader fell behind, resumes at the next task.
        """
        next_task = start_task
        reconnect = Reconnect(self.id, resumable=True)
        while True:
            request = pb.GetJobResultsRequest(job_id=self.id, start_task=next_task)
            grouper = ResultGrouper()
            try:
                with contextlib.closing(self._rpc.get_job_results(request, None)) as parts:
                    for part in parts:
                        done = grouper.add(part)
                        if done is not None:
                            reconnect.delivered()
                            next_task = done.task_index + 1
                            yield done
                last = grouper.finish()
                if last is not None:
                    yield last
                return
            except GradserveError as error:
                pause = reconnect.pause(error)
            time.sleep(pause)


class AsyncJob:
    """A submitted job, for :class:`gradserve.AsyncClient`: the same methods, awaited."""

    def __init__(self, rpc: AsyncRpc, job_id: str) -> None:
        self._rpc = rpc
        self.id = job_id

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def status(self, *, timeout: float | None = None) -> JobStatus:
        """The job's state and progress now."""
        msg = await self._rpc.get_job(pb.GetJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    async def cancel(self, *, timeout: float | None = None) -> JobStatus:
        """Stop the job: no more chunks start and those running are cancelled."""
        msg = await self._rpc.cancel_job(pb.CancelJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg)

    async def delete(self, *, timeout: float | None = None) -> JobStatus:
        """Delete the job and its results (see :meth:`Job.delete`)."""
        msg = await self._rpc.delete_job(pb.DeleteJobRequest(job_id=self.id), timeout)
        return JobStatus._from_proto(msg.job)

    async def wait(self, timeout: float | None = None, progress: bool = False) -> JobStatus:
        """Until the job ends; its final status (see :meth:`Job.wait`)."""
        bar = ProgressBar() if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        reconnect = Reconnect(self.id, timeout)
        request = pb.WatchJobRequest(job_id=self.id)
        while True:
            try:
                async with contextlib.aclosing(
                    self._rpc.watch_job(request, _time_left(deadline))
                ) as events:
                    async for event in events:
                        reconnect.delivered()
                        status = JobStatus._from_proto(event.job)
                        if bar is not None:
                            bar.update(status)
                        if status.done:
                            return status
            except GradserveError as error:
                pause = reconnect.pause(error)
            await asyncio.sleep(pause)

    async def results(self, start_task: int = 0) -> AsyncIterator[TaskResult]:
        """Each task's result in task order, as tasks finish (``async for``); resumes
        as :meth:`Job.results` does."""
        next_task = start_task
        reconnect = Reconnect(self.id, resumable=True)
        while True:
            request = pb.GetJobResultsRequest(job_id=self.id, start_task=next_task)
            grouper = ResultGrouper()
            try:
                async with contextlib.aclosing(self._rpc.get_job_results(request, None)) as parts:
                    async for part in parts:
                        done = grouper.add(part)
                        if done is not None:
                            reconnect.delivered()
                            next_task = done.task_index + 1
                            yield done
                last = grouper.finish()
                if last is not None:
                    yield last
                return
            except GradserveError as error:
                pause = reconnect.pause(error)
            await asyncio.sleep(pause)
