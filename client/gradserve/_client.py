"""The blocking client: the shared logic of BaseClient over a grpc channel."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from gradserve import jobspec, shm
from gradserve._base import RETRY_STREAM_KEY, TLS, BaseClient, OutgoingCompute, StreamedReply
from gradserve.errors import GradserveError, from_rpc_error
from gradserve.jobs import Job, job_states
from gradserve.jobspec import JobSpec
from gradserve.results import CheckReport, ComputeResult, JobStatus, ServerInfo
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

T = TypeVar("T")


def _wants_retry_as_stream(error: grpc.RpcError) -> bool:
    trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return RETRY_STREAM_KEY in trailing


class Client(BaseClient):
    """A blocking gradserve client.

    >>> with Client("127.0.0.1:50051") as client:          # doctest: +SKIP
    ...     client.grad("2 * dot(x, x)", {"x": [0.0, 1.0, 2.0, 3.0]})
    array([ 0.,  4.,  8., 12.])

    ``token``: the bearer token (default $GRADSERVE_TOKEN); ``tls``: a
    :class:`gradserve.TLS`, or True for the system's CAs (default: TLS when
    $GRADSERVE_TLS_CA/_CERT/_KEY are set, else plaintext); ``shared_memory``:
    True to hand tensors over by shared memory (the server must run on this host),
    "auto" to do so where the server can and go by the wire where it cannot, False
    (default) never; each compute call may choose otherwise (docs/sdk.md).
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
            self._channel = grpc.insecure_channel(self.address, options=self._channel_options)
        else:
            self._channel = grpc.secure_channel(
                self.address, self._credentials, options=self._channel_options
            )
        self._stub = pb_grpc.GradientServiceStub(self._channel)

    def close(self) -> None:
        self._release_shared_memory()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return fn(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _stream_compute(self, req: OutgoingCompute, timeout: float | None) -> ComputeResult:
        reply = StreamedReply()
        try:
            for part in self._stub.ComputeStream(
                req.parts(), timeout=self._deadline(timeout), metadata=self._metadata
            ):
                reply.add(part)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return reply.result()

    def _run_compute(self, req: OutgoingCompute, pick: str | None, timeout: float | None) -> Any:
        chosen = self._shared_mode(req)
        shared = self._shared_compute(req, chosen, timeout) if chosen else None
        if shared is not None:
            result = (
                shared if isinstance(shared, ComputeResult) else self._stream_compute(req, timeout)
            )
        elif req.wants_stream:
            result = self._stream_compute(req, timeout)
        else:
            try:
                resp = self._stub.Compute(
                    req.unary(), timeout=self._deadline(timeout), metadata=self._metadata
                )
                result = self._decode_compute(resp)
            except grpc.RpcError as error:
                if not _wants_retry_as_stream(error):
                    raise from_rpc_error(error) from None
                result = self._stream_compute(req, timeout)
        return result if pick is None else result[pick]

    # ------------------------------------------------------------- shared memory

    def _shared_compute(
        self, req: OutgoingCompute, chosen: bool | str, timeout: float | None
    ) -> ComputeResult | str | None:
        """The call by shared memory; "stream" when its outputs came back too large for
        a message (they go on the wire: their size was unknown), None to go by the wire."""
        shared, retire = self._shared_layout(req)
        segments = self._segments
        assert segments is not None
        try:
            for old in retire:
                self._unregister(old)
                segments.drop(old)
            first = True
            while True:
                try:
                    if not shared.segment.registered:
                        request = shared.segment.register_request()
                        self._call(self._stub.RegisterSharedMemory, request, timeout)
                        shared.segment.registered = True
                    resp = self._stub.Compute(
                        shared.header, timeout=self._deadline(timeout), metadata=self._metadata
                    )
                    return self._shared_result(shared, resp)
                except grpc.RpcError as error:
                    if _wants_retry_as_stream(error):
                        return "stream"
                    refused: GradserveError = from_rpc_error(error)
                except GradserveError as error:
                    refused = error
                if not self._shared_refused(refused, chosen, first):
                    return None
                first = False
        finally:
            segments.give_back(shared.segment)

    def _unregister(self, segment: shm.Segment) -> None:
        if segment.registered:
            with contextlib.suppress(grpc.RpcError):
                self._stub.UnregisterSharedMemory(
                    pb.UnregisterSharedMemoryRequest(name=segment.key),
                    timeout=5,
                    metadata=self._metadata,
                )
            segment.registered = False

    def _release_shared_memory(self) -> None:
        segments, self._segments = self._segments, None
        if segments is not None:
            for segment in segments.take_all():
                self._unregister(segment)
            segments.close()

    def shared_memory_regions(
        self, *, timeout: float | None = None
    ) -> list[shm.SharedMemoryRegion]:
        """The shared-memory regions the server holds for this caller (its tenant)."""
        msg = self._call(self._stub.ListSharedMemory, pb.ListSharedMemoryRequest(), timeout)
        return [shm.SharedMemoryRegion._from_proto(r) for r in msg.regions]

    def _run_check(self, req: pb.CheckRequest, timeout: float | None) -> CheckReport:
        return self._decode_check(self._call(self._stub.Check, req, timeout))

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """Version, workers, limits and the function table of the server."""
        msg = self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout)
        return ServerInfo._from_proto(msg)

    # ------------------------------------------------------------- jobs

    def submit(
        self,
        job: JobSpec,
        *,
        idempotency_key: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit a batch job: a dict, or the path of a YAML or JSON job file.

        Submitting again with the same ``idempotency_key`` returns the same job
        (the same key with a different spec raises AlreadyExistsError).
        """
        req = jobspec.load(job, name=name)
        req.idempotency_key = idempotency_key or ""
        msg = self._call(self._stub.SubmitJob, req, timeout)
        return Job(self, msg.id)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (raises NotFoundError on first use if unknown)."""
        return Job(self, job_id)

    def delete_job(self, job_id: str, *, timeout: float | None = None) -> JobStatus:
        """Delete a job and its results (cancelling it first if it is active); its
        status as it was when deleted. Raises NotFoundError for an unknown id."""
        return self.job(job_id).delete(timeout=timeout)

    def jobs(
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
            resp = self._call(self._stub.ListJobs, req, timeout)
            out += [JobStatus._from_proto(m) for m in resp.jobs]
            if not resp.next_page_token:
                return out
            req.page_token = resp.next_page_token
