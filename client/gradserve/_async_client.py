"""The asyncio client: the shared logic of BaseClient over a grpc.aio channel."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio

from gradserve import jobspec, shm
from gradserve._base import RETRY_STREAM_KEY, TLS, BaseClient, OutgoingCompute, StreamedReply
from gradserve.errors import GradserveError, from_rpc_error
from gradserve.jobs import AsyncJob, job_states
from gradserve.jobspec import JobSpec
from gradserve.results import CheckReport, ComputeResult, JobStatus, ServerInfo
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


class AsyncClient(BaseClient):
    """The same methods as :class:`gradserve.Client`, awaited.

    >>> async with AsyncClient("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     await client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]})
    array([4., 8.])
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        tls: TLS | bool | None = None,
        shared_memory: bool | str = False,
    ) -> None:
        super().__init__(
            address, token=token, timeout=timeout, tls=tls, shared_memory=shared_memory
        )
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=self._channel_options)
        else:
            self._channel = grpc.aio.secure_channel(
                self.address, self._credentials, options=self._channel_options
            )
        self._stub = pb_grpc.GradientServiceStub(self._channel)

    async def close(self) -> None:
        await self._release_shared_memory()
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await fn(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def _stream_compute(self, req: OutgoingCompute, timeout: float | None) -> ComputeResult:
        async def parts() -> AsyncIterator[pb.ComputeRequestPart]:
            for part in req.parts():
                yield part

        call = self._stub.ComputeStream(
            parts(), timeout=self._deadline(timeout), metadata=self._metadata
        )
        reply = StreamedReply()
        try:
            async for part in call:
                reply.add(part)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return reply.result()

    async def _compute(self, req: OutgoingCompute, pick: str | None, timeout: float | None) -> Any:
        chosen = self._shared_mode(req)
        shared = await self._shared_compute(req, chosen, timeout) if chosen else None
        if isinstance(shared, ComputeResult):
            result = shared
        elif shared is not None or req.wants_stream:
            result = await self._stream_compute(req, timeout)
        else:
            try:
                resp = await self._stub.Compute(
                    req.unary(), timeout=self._deadline(timeout), metadata=self._metadata
                )
                result = self._decode_compute(resp)
            except grpc.RpcError as error:
                trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
                if RETRY_STREAM_KEY not in trailing:
                    raise from_rpc_error(error) from None
                result = await self._stream_compute(req, timeout)
        return result if pick is None else result[pick]

    def _run_compute(self, req: OutgoingCompute, pick: str | None, timeout: float | None) -> Any:
        return self._compute(req, pick, timeout)

    # ------------------------------------------------------------- shared memory

    async def _shared_compute(
        self, req: OutgoingCompute, chosen: bool | str, timeout: float | None
    ) -> ComputeResult | str | None:
        """As :meth:`gradserve.Client._shared_compute`, awaited."""
        shared, retire = self._shared_layout(req)
        segments = self._segments
        assert segments is not None
        try:
            for old in retire:
                await self._unregister(old)
                segments.drop(old)
            first = True
            while True:
                try:
                    if not shared.segment.registered:
                        request = shared.segment.register_request()
                        await self._call(self._stub.RegisterSharedMemory, request, timeout)
                        shared.segment.registered = True
                    resp = await self._stub.Compute(
                        shared.header, timeout=self._deadline(timeout), metadata=self._metadata
                    )
                    return self._shared_result(shared, resp)
                except grpc.RpcError as error:
                    trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
                    if RETRY_STREAM_KEY in trailing:
                        return "stream"
                    refused: GradserveError = from_rpc_error(error)
                except GradserveError as error:
                    refused = error
                if not self._shared_refused(refused, chosen, first):
                    return None
                first = False
        finally:
            segments.give_back(shared.segment)

    async def _unregister(self, segment: shm.Segment) -> None:
        if segment.registered:
            with contextlib.suppress(grpc.RpcError):
                await self._stub.UnregisterSharedMemory(
                    pb.UnregisterSharedMemoryRequest(name=segment.key),
                    timeout=5,
                    metadata=self._metadata,
                )
            segment.registered = False

    async def _release_shared_memory(self) -> None:
        segments, self._segments = self._segments, None
        if segments is not None:
            for segment in segments.take_all():
                await self._unregister(segment)
            segments.close()

    async def shared_memory_regions(
        self, *, timeout: float | None = None
    ) -> list[shm.SharedMemoryRegion]:
        """The shared-memory regions the server holds for this caller (its tenant)."""
        msg = await self._call(self._stub.ListSharedMemory, pb.ListSharedMemoryRequest(), timeout)
        return [shm.SharedMemoryRegion._from_proto(r) for r in msg.regions]

    async def _check(self, req: pb.CheckRequest, timeout: float | None) -> CheckReport:
        return self._decode_check(await self._call(self._stub.Check, req, timeout))

    def _run_check(self, req: pb.CheckRequest, timeout: float | None) -> Any:
        return self._check(req, timeout)

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        msg = await self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout)
        return ServerInfo._from_proto(msg)

    # ------------------------------------------------------------- jobs

    async def submit(
        self,
        job: JobSpec,
        *,
        idempotency_key: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> AsyncJob:
        """Submit a batch job: a dict, or the path of a YAML or JSON job file."""
        req = jobspec.load(job, name=name)
        req.idempotency_key = idempotency_key or ""
        msg = await self._call(self._stub.SubmitJob, req, timeout)
        return AsyncJob(self, msg.id)

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    async def delete_job(self, job_id: str, *, timeout: float | None = None) -> JobStatus:
        """Delete a job and its results (cancelling it first if it is active); its
        status as it was when deleted. Raises NotFoundError for an unknown id."""
        return await self.job(job_id).delete(timeout=timeout)

    async def jobs(
        self,
        states: str | Sequence[str] | None = None,
        *,
        page_size: int = 50,
        timeout: float | None = None,
    ) -> list[JobStatus]:
        """Every job (newest first), optionally only those in ``states``."""
        out: list[JobStatus] = []
        req = pb.ListJobsRequest(page_size=page_size, states=job_states(states))
        while True:
            resp = await self._call(self._stub.ListJobs, req, timeout)
            out += [JobStatus._from_proto(m) for m in resp.jobs]
            if not resp.next_page_token:
                return out
            req.page_token = resp.next_page_token
