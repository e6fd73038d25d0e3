"""The gRPC face of the service: decode, call ComputeService or the job manager, encode."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve_server import __version__, calls, shm
from gradserve_server.budgets import Reservation
from gradserve_server.encoding import outputs_to_proto, report_to_proto, stream_outputs
from gradserve_server.errors import (
    ServiceError,
    guard,
    guard_stream,
    invalid,
    not_found,
    safe_deserializer,
    unavailable,
)
from gradserve_server.jobs import JobManager, bounded
from gradserve_server.pipeline import Pipeline
from gradserve_server.pool import pool_key
from gradserve_server.requests import ComputeHeader
from gradserve_server.service import ComputeService
from gradserve_server.streams import STREAM_PIECE_BYTES, next_part, prepend, send_paced
from gradserve_workers import registry
from gradserve_workers.lang import FUNCTIONS

_calls = itertools.count()


def _tenant(context: grpc.aio.ServicerContext) -> str:
    # the pool serves tenants round-robin, and within a tenant each call in turn
    return pool_key(calls.identity().tenant, f"call-{next(_calls)}")


_OPS = {number: name.removeprefix("OP_").lower() for name, number in pb.Op.items()}


def _note_ops(ops: Any) -> None:
    # the op is a metric label: a set in the proto's order, so at most 2^8 values
    names = dict.fromkeys(_OPS.get(o, "unknown") for o in sorted(set(ops)))
    calls.note(op="+".join(names))


def _note_done(meta: pb.ComputeMetadata) -> None:
    calls.note(points=meta.points, chunks=meta.chunks)


def _over_message_limit(size: int, limit: int, verb: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the reply {verb} {size} bytes, over the message limit of {limit}; "
        "call ComputeStream (the SDK retries there by itself)",
        retry_stream=True,
    )


class GradientServicer(pb_grpc.GradientServiceServicer):
    def __init__(self, service: ComputeService, jobs: Any = None, ray_address: str = "") -> None:
        self.service = service
        self.jobs = jobs
        self.ray_address = ray_address
        self._stall_s = service.config.stream_stall_s

    @guard
    async def Compute(
        self, request: pb.ComputeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ComputeResponse:
        _note_ops(request.ops)
        limit = self.service.config.max_message_bytes
        in_reply = not request.HasField("output")  # else they go into shared memory
        # admitted once, its reply budget carrying the message limit when it is the reply's
        header = self.service.admit_compute(request, unary=in_reply)
        estimate = header.estimate
        if in_reply and estimate.out is not None and estimate.reply_bytes > limit:
            raise _over_message_limit(estimate.reply_bytes, limit, "would be")  # no work done
        done = await self.service.compute(request, _tenant(context), header=header)
        _note_done(done.metadata)
        resp = pb.ComputeResponse(metadata=done.metadata)
        if done.placed is not None:
            resp.results.extend(done.placed)
        else:
            outputs_to_proto(done.joined(), resp.results)
        del done
        if resp.ByteSize() > limit:
            raise _over_message_limit(resp.ByteSize(), limit, "is")
        return resp

    @guard
    async def ComputeStream(
        self, request_iterator: AsyncIterator[pb.ComputeRequestPart], context: Any
    ) -> None:
        tenant = _tenant(context)
        first = await next_part(request_iterator, self._stall_s)
        if first is not None and first.HasField("header"):
            shm.refuse_streamed(first.header)
            # a large batch is computed by chunks as it arrives, when it can be
            pipelined = Pipeline.start(self.service, first.header, tenant)
            if pipelined is not None:
                _note_ops(first.header.ops)
                _note_done(await pipelined.run(request_iterator, context, self._stall_s))
                return
        msg, admitted, blobs, held = await self._receive(prepend(first, request_iterator))
        try:
            _note_ops(msg.ops)
            done = await self.service.compute(msg, tenant, blobs, admitted)
            _note_done(done.metadata)
        finally:
            del blobs
            held.release()
        # the reply is held once, in the workers' arrays, while pieces are cut from it
        with self.service.inflight.take(done.nbytes, "ComputeStream: the reply"):
            resp = pb.ComputeResponse(metadata=done.metadata)
            slots = stream_outputs(done.outputs, resp.results)
            del done

            # pieces are cut as they are sent, each one ahead of its room at most
            async def reply() -> AsyncIterator[pb.ComputeResponsePart]:
                yield pb.ComputeResponsePart(header=resp)
                for piece in wire.split_pieces(slots, STREAM_PIECE_BYTES):
                    yield pb.ComputeResponsePart(piece=piece)

            await send_paced(
                context, reply(), self.service.stream_pieces, "ComputeStream", self._stall_s
            )

    async def _receive(
        self, parts: AsyncIterator[pb.ComputeRequestPart]
    ) -> tuple[pb.ComputeRequest, ComputeHeader, list[bytes], Reservation]:
        """A streamed request's header and its slots' bytes. The header is admitted
        (shapes, points, reply estimate, the bytes it declares) before a piece is
        kept, and each piece is checked as it arrives: the stream holds at most what
        its header declared, reserved from the server's bytes in flight until the
        call is done with them. A sender that sends nothing for the stall limit
        loses its stream (and the reservation it held)."""
        header: pb.ComputeRequest | None = None
        admitted: ComputeHeader | None = None
        assembler: wire.PieceAssembler | None = None
        held: Reservation | None = None
        try:
            while (part := await next_part(parts, self._stall_s)) is not None:
                if part.HasField("header"):
                    if header is not None:
                        raise invalid("ComputeStream: a second header arrived")
                    header = part.header
                    admitted = self.service.admit_compute(header)
                    slots = wire.request_slots(header)
                    sizes = [wire.expected_bytes(t) for t in slots]
                    held = self.service.inflight.take(sum(sizes), "ComputeStream: the request")
                    assembler = wire.PieceAssembler(sizes)
                elif assembler is None:
                    raise invalid("ComputeStream: a piece arrived before the header")
                else:
                    try:
                        assembler.add(part.piece)
                    except wire.WireError as exc:
                        raise invalid(f"ComputeStream: {exc}", "piece") from None
            if header is None or admitted is None or assembler is None or held is None:
                raise invalid("ComputeStream: the request stream was empty")
            try:
                return header, admitted, assembler.finish(), held
            except wire.WireError as exc:
                raise invalid(f"ComputeStream: {exc}", "piece") from None
        except BaseException:
            if held is not None:
                held.release()
            raise

    @guard
    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        calls.note(op="check")
        report, done = await self.service.check(request, _tenant(context))
        calls.note(
            points=done.metadata.points,
            chunks=done.metadata.chunks,
            verdict="passed" if report.passed else "failed",
        )
        meta = done.metadata
        return pb.CheckResponse(report=report_to_proto(report, meta.execution_path), metadata=meta)

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

    # ------------------------------------------------------------- shared memory

    @guard
    async def RegisterSharedMemory(
        self, request: pb.RegisterSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.SharedMemoryRegion:
        return self.service.shared.register(calls.identity().tenant, request).to_proto()

    @guard
    async def UnregisterSharedMemory(
        self, request: pb.UnregisterSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnregisterSharedMemoryResponse:
        gone = self.service.shared.unregister(calls.identity().tenant, request.name)
        return pb.UnregisterSharedMemoryResponse(regions=[r.to_proto() for r in gone])

    @guard
    async def ListSharedMemory(
        self, request: pb.ListSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSharedMemoryResponse:
        regions = self.service.shared.listed(calls.identity().tenant, request.name)
        return pb.ListSharedMemoryResponse(regions=[r.to_proto() for r in regions])

    # ------------------------------------------------------------- jobs

    def _jobs(self) -> JobManager:
        if self.jobs is None:
            raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "this server runs no job manager")
        manager: JobManager = self.jobs
        return manager

    async def _owned(self, job_id: str) -> JobManager:
        """The job manager, once the caller may see ``job_id``: another tenant's job
        is NOT_FOUND, word for word as a job that does not exist. The store is read
        in a thread: its lock may be held by a large job's insert."""
        manager = self._jobs()
        shown = bounded.clip(job_id, bounded.MAX_ECHO_CHARS)
        calls.note(job=shown)
        who = calls.identity()
        if not who.admin:
            try:
                owner = await asyncio.to_thread(manager.store.job_tenant, job_id)
            except sqlite3.ProgrammingError:  # the store closed: the server is stopping
                raise unavailable(
                    "the server is shutting down; jobs resume when it restarts"
                ) from None
            if owner is not None and owner != who.tenant:
                raise not_found(f"no job {shown!r}")
        return manager

    @guard
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        job = await self._jobs().submit(request, tenant=calls.identity().tenant)
        calls.note(job=job.id, points=job.points_total)
        return job

    @guard
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        jobs = await self._owned(request.job_id)
        return await jobs.get(request.job_id)

    @guard
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        who = calls.identity()
        return await self._jobs().list(request, tenant=None if who.admin else who.tenant)

    @guard_stream
    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobEvent]:
        jobs = await self._owned(request.job_id)
        async for event in jobs.watch(request.job_id):
            yield event

    @guard
    async def GetJobResults(
        self, request: pb.GetJobResultsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        jobs = await self._owned(request.job_id)
        parts = jobs.results(request.job_id, request.start_task)
        await send_paced(context, parts, self.service.stream_pieces, "GetJobResults", self._stall_s)

    @guard
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        jobs = await self._owned(request.job_id)
        return await jobs.cancel(request.job_id)

    @guard
    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteJobResponse:
        jobs = await self._owned(request.job_id)
        return await jobs.delete(request.job_id)


_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: GradientServicer, server: Any) -> None:
    """Register the service as the generated code does, but with deserializers that
    hand bytes which are not a message to the handler (INVALID_ARGUMENT), instead of
    letting gRPC answer UNKNOWN."""
    service = pb.DESCRIPTOR.services_by_name["GradientService"]
    handlers = {
        method.name: _HANDLERS[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=safe_deserializer(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
