"""The service's RPCs, one method each, over a blocking channel (:class:`SyncRpc`)
and an asyncio one (:class:`AsyncRpc`): the only code of the SDK that talks gRPC.

Every method sends the client's metadata and turns a ``grpc.RpcError`` into the
SDK's exception tree (:func:`gradserve.errors.rpc_errors`). Unary methods, and
ComputeStream, apply the client's default timeout; the job streams (WatchJob,
GetJobResults) run as long as the caller says, ``None`` for no deadline, since a
job may run for hours.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable
from typing import Any

import grpc
import grpc.aio

from gradserve._config import ClientConfig
from gradserve.errors import rpc_errors
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


class SyncRpc:
    """Blocking calls on one channel."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        if config.credentials is None:
            self._channel = grpc.insecure_channel(config.address, options=config.channel_options)
        else:
            self._channel = grpc.secure_channel(
                config.address, config.credentials, options=config.channel_options
            )
        self._stub = pb_grpc.GradientServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        with rpc_errors():
            return method(
                request, timeout=self.config.deadline(timeout), metadata=self.config.metadata
            )

    def _stream(self, call: Any) -> Generator[Any, None, None]:
        try:
            with rpc_errors():
                yield from call
        finally:
            call.cancel()

    def compute(self, req: pb.ComputeRequest, timeout: float | None) -> pb.ComputeResponse:
        return self._unary(self._stub.Compute, req, timeout)

    def compute_stream(
        self, parts: Iterable[pb.ComputeRequestPart], timeout: float | None
    ) -> Generator[pb.ComputeResponsePart, None, None]:
        call = self._stub.ComputeStream(
            iter(parts), timeout=self.config.deadline(timeout), metadata=self.config.metadata
        )
        return self._stream(call)

    def check(self, req: pb.CheckRequest, timeout: float | None) -> pb.CheckResponse:
        return self._unary(self._stub.Check, req, timeout)

    def get_server_info(self, req: pb.GetServerInfoRequest, timeout: float | None) -> pb.ServerInfo:
        return self._unary(self._stub.GetServerInfo, req, timeout)

    def submit_job(self, req: pb.SubmitJobRequest, timeout: float | None) -> pb.Job:
        return self._unary(self._stub.SubmitJob, req, timeout)

    def get_job(self, req: pb.GetJobRequest, timeout: float | None) -> pb.Job:
        return self._unary(self._stub.GetJob, req, timeout)

    def list_jobs(self, req: pb.ListJobsRequest, timeout: float | None) -> pb.ListJobsResponse:
        return self._unary(self._stub.ListJobs, req, timeout)

    def cancel_job(self, req: pb.CancelJobRequest, timeout: float | None) -> pb.Job:
        return self._unary(self._stub.CancelJob, req, timeout)

    def delete_job(self, req: pb.DeleteJobRequest, timeout: float | None) -> pb.DeleteJobResponse:
        return self._unary(self._stub.DeleteJob, req, timeout)

    def register_shared_memory(
        self, req: pb.RegisterSharedMemoryRequest, timeout: float | None
    ) -> pb.SharedMemoryRegion:
        return self._unary(self._stub.RegisterSharedMemory, req, timeout)

    def unregister_shared_memory(
        self, req: pb.UnregisterSharedMemoryRequest, timeout: float | None
    ) -> pb.UnregisterSharedMemoryResponse:
        return self._unary(self._stub.UnregisterSharedMemory, req, timeout)

    def list_shared_memory(
        self, req: pb.ListSharedMemoryRequest, timeout: float | None
    ) -> pb.ListSharedMemoryResponse:
        return self._unary(self._stub.ListSharedMemory, req, timeout)

    def watch_job(
        self, req: pb.WatchJobRequest, timeout: float | None
    ) -> Generator[pb.JobEvent, None, None]:
        call = self._stub.WatchJob(req, timeout=timeout, metadata=self.config.metadata)
        return self._stream(call)

    def get_job_results(
        self, req: pb.GetJobResultsRequest, timeout: float | None
    ) -> Generator[pb.TaskResultPart, None, None]:
        call = self._stub.GetJobResults(req, timeout=timeout, metadata=self.config.metadata)
        return self._stream(call)


class AsyncRpc:
    """The same calls on one grpc.aio channel, awaited."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        if config.credentials is None:
            self._channel = grpc.aio.insecure_channel(
                config.address, options=config.channel_options
            )
        else:
            self._channel = grpc.aio.secure_channel(
                config.address, config.credentials, options=config.channel_options
            )
        self._stub = pb_grpc.GradientServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        with rpc_errors():
            return await method(
                request, timeout=self.config.deadline(timeout), metadata=self.config.metadata
            )

    async def _stream(self, call: Any) -> AsyncGenerator[Any, None]:
        try:
            with rpc_errors():
                async for message in call:
                    yield message
        finally:
            call.cancel()

    async def compute(self, req: pb.ComputeRequest, timeout: float | None) -> pb.ComputeResponse:
        return await self._unary(self._stub.Compute, req, timeout)

    def compute_stream(
        self, parts: Iterable[pb.ComputeRequestPart], timeout: float | None
    ) -> AsyncGenerator[pb.ComputeResponsePart, None]:
        async def send() -> AsyncIterator[pb.ComputeRequestPart]:
            for part in parts:
                yield part

        call = self._stub.ComputeStream(
            send(), timeout=self.config.deadline(timeout), metadata=self.config.metadata
        )
        return self._stream(call)

    async def check(self, req: pb.CheckRequest, timeout: float | None) -> pb.CheckResponse:
        return await self._unary(self._stub.Check, req, timeout)

    async def get_server_info(
        self, req: pb.GetServerInfoRequest, timeout: float | None
    ) -> pb.ServerInfo:
        return await self._unary(self._stub.GetServerInfo, req, timeout)

    async def submit_job(self, req: pb.SubmitJobRequest, timeout: float | None) -> pb.Job:
        return await self._unary(self._stub.SubmitJob, req, timeout)

    async def get_job(self, req: pb.GetJobRequest, timeout: float | None) -> pb.Job:
        return await self._unary(self._stub.GetJob, req, timeout)

    async def list_jobs(
        self, req: pb.ListJobsRequest, timeout: float | None
    ) -> pb.ListJobsResponse:
        return await self._unary(self._stub.ListJobs, req, timeout)

    async def cancel_job(self, req: pb.CancelJobRequest, timeout: float | None) -> pb.Job:
        return await self._unary(self._stub.CancelJob, req, timeout)

    async def delete_job(
        self, req: pb.DeleteJobRequest, timeout: float | None
    ) -> pb.DeleteJobResponse:
        return await self._unary(self._stub.DeleteJob, req, timeout)

    async def register_shared_memory(
        self, req: pb.RegisterSharedMemoryRequest, timeout: float | None
    ) -> pb.SharedMemoryRegion:
        return await self._unary(self._stub.RegisterSharedMemory, req, timeout)

    async def unregister_shared_memory(
        self, req: pb.UnregisterSharedMemoryRequest, timeout: float | None
    ) -> pb.UnregisterSharedMemoryResponse:
        return await self._unary(self._stub.UnregisterSharedMemory, req, timeout)

    async def list_shared_memory(
        self, req: pb.ListSharedMemoryRequest, timeout: float | None
    ) -> pb.ListSharedMemoryResponse:
        return await self._unary(self._stub.ListSharedMemory, req, timeout)

    def watch_job(
        self, req: pb.WatchJobRequest, timeout: float | None
    ) -> AsyncGenerator[pb.JobEvent, None]:
        call = self._stub.WatchJob(req, timeout=timeout, metadata=self.config.metadata)
        return self._stream(call)

    def get_job_results(
        self, req: pb.GetJobResultsRequest, timeout: float | None
    ) -> AsyncGenerator[pb.TaskResultPart, None]:
        call = self._stub.GetJobResults(req, timeout=timeout, metadata=self.config.metadata)
        return self._stream(call)
