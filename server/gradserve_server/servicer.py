"""The gRPC face of the service: decode, call ComputeService or the job manager, encode."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gradserve import _wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve_server import __version__
from gradserve_server.errors import ServiceError, guard, guard_stream, invalid
from gradserve_server.jobs import JobManager
from gradserve_server.service import (
    ComputeService,
    outputs_to_proto,
    report_to_proto,
)
from gradserve_workers import registry
from gradserve_workers.lang import FUNCTIONS

_calls = itertools.count()


def _tenant(context: grpc.aio.ServicerContext) -> str:
    # each call is its own tenant: the pool serves tenants round-robin
    return f"call-{next(_calls)}"


class GradientServicer(pb_grpc.GradientServiceServicer):
    def __init__(self, service: ComputeService, jobs: Any = None, ray_address: str = "") -> None:
        self.service = service
        self.jobs = jobs
        self.ray_address = ray_address

    @guard
    async def Compute(
        self, request: pb.ComputeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ComputeResponse:
        done = await self.service.compute(request, _tenant(context))
        resp = pb.ComputeResponse(metadata=done.metadata)
        outputs_to_proto(done.outputs, resp.results)
        limit = self.service.config.max_message_bytes
        if resp.ByteSize() > limit:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the reply is {resp.ByteSize()} bytes, over the message limit of {limit}; "
                "call ComputeStream (the SDK retries there by itself)",
                retry_stream=True,
            )
        return resp

    @guard_stream
    async def ComputeStream(
        self, request_iterator: AsyncIterator[pb.ComputeRequestPart], context: Any
    ) -> AsyncIterator[pb.ComputeResponsePart]:
        header: pb.ComputeRequest | None = None
        pieces = []
        async for part in request_iterator:
            if part.HasField("header"):
                if header is not None:
                    raise invalid("ComputeStream: a second header arrived")
                header = part.header
            elif header is None:
                raise invalid("ComputeStream: a piece arrived before the header")
            else:
                pieces.append(part.piece)
        if header is None:
            raise invalid("ComputeStream: the request stream was empty")
        try:
            blobs = _wire.join_pieces(_wire.request_slots(header), pieces)
        except _wire.WireError as exc:
            raise invalid(f"ComputeStream: {exc}") from None
        del pieces
        done = await self.service.compute(header, _tenant(context), blobs)
        resp = pb.ComputeResponse(metadata=done.metadata)
        arrays = outputs_to_proto(done.outputs, resp.results, with_data=False)
        yield pb.ComputeResponsePart(header=resp)
        for piece in _wire.split_pieces([a.data.cast("B") for a in arrays]):
            yield pb.ComputeResponsePart(piece=piece)

    @guard
    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        report, done = await self.service.check(request, _tenant(context))
        return pb.CheckResponse(report=report_to_proto(report), metadata=done.metadata)

    @guard
    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerInfo:
        config = self.service.config
        return pb.ServerInfo(
            version=__version__,
            workers=len(self.service.pool.workers),
            ray_address=self.ray_address,
            limits={**config.limits, "max_points": config.max_points},
            functions=[
                pb.FunctionInfo(
                    name=name,
                    signature=spec.signature,
                    example=spec.example,
                )
                for name, spec in sorted(FUNCTIONS.items())
            ],
            device=config.device,
            max_message_bytes=config.max_message_bytes,
            registered_functions=[
                pb.RegisteredFunction(name=f.name, inputs=list(f.inputs), doc=f.doc)
                for f in registry.catalogue()
            ],
        )

    # ------------------------------------------------------------- jobs

    def _jobs(self) -> JobManager:
        if self.jobs is None:
            raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "this server runs no job manager")
        manager: JobManager = self.jobs
        return manager

    @guard
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        return await self._jobs().submit(request)

    @guard
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return self._jobs().get(request.job_id)

    @guard
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        return self._jobs().list(request)

    @guard_stream
    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobEvent]:
        async for event in self._jobs().watch(request.job_id):
            yield event

    @guard_stream
    async def GetJobResults(
        self, request: pb.GetJobResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TaskResultPart]:
        async for part in self._jobs().results(request.job_id, request.start_task):
            yield part

    @guard
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        return await self._jobs().cancel(request.job_id)
