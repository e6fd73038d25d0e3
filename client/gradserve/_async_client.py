"""The asyncio client: the pure request/response logic of :mod:`gradserve._core`
over a grpc.aio channel (:class:`gradserve._rpc.AsyncRpc`). Its methods are
:class:`gradserve.Client`'s, each a coroutine returning the same type."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from gradserve import _core, jobspec, shm
from gradserve._claims import Claim
from gradserve._config import TLS, ClientConfig
from gradserve._core import Inputs, OutgoingCompute, StreamedReply
from gradserve._rpc import AsyncRpc
from gradserve.errors import GradserveError, _RetryAsStream
from gradserve.jobs import AsyncJob
from gradserve.jobspec import JobSpec
from gradserve.results import (
    CheckReport,
    ComputeResult,
    Derivative,
    Hessian,
    JobStatus,
    ServerInfo,
)
from gradserve.sampling import Sample
from gradserve.v1 import gradserve_pb2 as pb


class AsyncClient:
    """The same methods as :class:`gradserve.Client`, awaited.

    >>> async with AsyncClient("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     await client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]})
    array([4., 8.])

    ``address`` defaults to $GRADSERVE_ADDRESS, then 127.0.0.1:50051; ``token``: the
    bearer token (default $GRADSERVE_TOKEN); ``timeout``: the default deadline of a
    call in seconds; ``tls``: a :class:`gradserve.TLS`, or True for the system's CAs
    (default: TLS when $GRADSERVE_TLS_CA/_CERT/_KEY are set, else plaintext);
    ``shared_memory``: True to hand tensors over by shared memory (the server must
    run on this host), "auto" to do so where the server can and go by the wire where
    it cannot, False (default) never; each compute call may choose otherwise
    (docs/sdk.md, "Shared memory").
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        tls: TLS | bool | None = None,
        shared_memory: bool | Literal["auto"] = False,
    ) -> None:
        self._shm = shm.ClientMemory(shared_memory)
        self._rpc = AsyncRpc(ClientConfig(address, token, timeout, tls))

    @property
    def address(self) -> str:
        """The server's address, as given or from $GRADSERVE_ADDRESS."""
        return self._rpc.config.address

    @property
    def timeout(self) -> float | None:
        """The default deadline of a call, in seconds (None: none)."""
        return self._rpc.config.timeout

    @property
    def shared_memory(self) -> bool | Literal["auto"]:
        """The client's ``shared_memory=`` choice (a call may choose otherwise)."""
        return self._shm.choice

    @property
    def shared_memory_off(self) -> str | None:
        """Why ``shared_memory="auto"`` went back to the wire for good (None: it has not)."""
        return self._shm.off

    async def close(self) -> None:
        for segment in self._shm.release():
            await self._unregister(segment)
        self._shm.close()
        await self._rpc.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _compute(self, req: OutgoingCompute, timeout: float | None) -> ComputeResult:
        chosen = self._shm.chosen(req.shared_memory)
        shared = await self._shared_compute(req, chosen, timeout) if chosen else None
        if isinstance(shared, ComputeResult):
            return shared
        # "stream": the outputs came back too large for a message (their size was unknown)
        if shared is None and not req.wants_stream:
            try:
                return _core.decode_compute(await self._rpc.compute(req.unary(), timeout))
            except _RetryAsStream:
                pass  # the reply is over the server's message limit: stream it
        reply = StreamedReply()
        # closed at once should a part be refused: the call is cancelled, not left open
        async with contextlib.aclosing(self._rpc.compute_stream(req.parts(), timeout)) as parts:
            async for part in parts:
                reply.add(part)
        return reply.result()

    # ------------------------------------------------------------- shared memory

    async def _shared_compute(
        self, req: OutgoingCompute, chosen: shm.Choice, timeout: float | None
    ) -> ComputeResult | Literal["stream"] | None:
        """As :meth:`gradserve.Client._shared_compute`, awaited."""
        shared, retire = self._shm.layout(req.header, req.arrays)
        try:
            for old in retire:
                await self._unregister(old)
                self._shm.drop(old)
            first = True
            while True:
                try:
                    for segment in shared.unregistered():
                        request = segment.register_request()
                        await self._rpc.register_shared_memory(request, timeout)
                        segment.registered = True
                    resp = await self._rpc.compute(shared.header, timeout)
                    return _core.decode_shared(shared, resp)
                except _RetryAsStream:
                    return "stream"
                except GradserveError as error:
                    if not self._shm.retry(error, chosen, first):
                        return None
                first = False
        finally:
            self._shm.give_back(shared)

    async def _unregister(self, segment: shm.Segment) -> None:
        if segment.registered:
            # best effort: the server forgets an unlinked segment's region by itself
            with contextlib.suppress(GradserveError):
                req = pb.UnregisterSharedMemoryRequest(name=segment.key)
                await self._rpc.unregister_shared_memory(req, 5)
            segment.registered = False

    async def shared_memory_regions(
        self, *, timeout: float | None = None
    ) -> list[shm.SharedMemoryRegion]:
        """The shared-memory regions the server holds for this caller (its tenant)."""
        msg = await self._rpc.list_shared_memory(pb.ListSharedMemoryRequest(), timeout)
        return [shm.SharedMemoryRegion._from_proto(r) for r in msg.regions]

    def shared_array(self, shape: int | Sequence[int], dtype: str = "float64") -> np.ndarray:
        """As :meth:`gradserve.Client.shared_array` (not a coroutine: it only makes the
        array, in this process)."""
        return self._shm.shared_array(shape, dtype)

    # ------------------------------------------------------------- operations

    async def compute(
        self, fn: str, inputs: Inputs, ops: Sequence[str], *,
        wrt: str | Sequence[str] | None = None, batched: bool = False,
        dtype: str | None = None, mode: str = "auto", chunk_size: int | None = None,
        cotangent: Any = None, tangents: Inputs | None = None, vector: Inputs | None = None,
        verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> ComputeResult:  # fmt: skip
        """Several operations in one call; returns a :class:`ComputeResult`.

        Operations share work where they can (``value`` and ``grad`` in one pass).
        ``verify=True`` certifies every derivative by a second route (forward
        against reverse mode) before it is returned, ``False`` never, ``None`` where
        that is cheap; ``metadata.certificate`` says how well the routes agreed, and
        a disagreement raises :class:`~gradserve.errors.InternalError`.
        """
        req = _core.compute_request(
            fn, inputs, list(ops), wrt=wrt, batched=batched, dtype=dtype, mode=mode,
            chunk_size=chunk_size, cotangent=cotangent, tangents=tangents, vector=vector,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return await self._compute(req, timeout)

    async def value(
        self, fn: str, inputs: Inputs, *, batched: bool = False, dtype: str | None = None,
        verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """``f(inputs)``; with ``batched=True`` one row per point. A value has no
        derivative to certify: ``verify`` is accepted for symmetry and ignored."""
        req = _core.compute_request(
            fn, inputs, ["value"], batched=batched, dtype=dtype, verify=verify,
            shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["value"]

    async def grad(
        self, fn: str, inputs: Inputs, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, verify: bool | None = None,
        timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> Derivative:  # fmt: skip
        """The gradient of a scalar function: one array per ``wrt`` input.

        One array when there is one input (or one ``wrt`` name), else a dict.
        ``verify``: see :meth:`compute`.
        """
        req = _core.compute_request(
            fn, inputs, ["grad"], wrt=wrt, batched=batched, dtype=dtype, verify=verify,
            shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["grad"]

    async def jacobian(
        self, fn: str, inputs: Inputs, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, mode: str = "auto",
        chunk_size: int | None = None, verify: bool | None = None,
        timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> Derivative:  # fmt: skip
        """``out_shape + in_shape`` per input; ``mode`` is auto, forward or reverse.
        ``verify``: see :meth:`compute`."""
        req = _core.compute_request(
            fn, inputs, ["jacobian"], wrt=wrt, batched=batched, dtype=dtype, mode=mode,
            chunk_size=chunk_size, verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["jacobian"]

    async def hessian(
        self, fn: str, inputs: Inputs, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, chunk_size: int | None = None,
        verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> Hessian:  # fmt: skip
        """``in_shape + in_shape``; with several inputs a nested dict ``H[a][b]``.
        ``verify``: see :meth:`compute`."""
        req = _core.compute_request(
            fn, inputs, ["hessian"], wrt=wrt, batched=batched, dtype=dtype,
            chunk_size=chunk_size, verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["hessian"]

    async def vjp(
        self, fn: str, inputs: Inputs, cotangent: Any, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, verify: bool | None = None,
        timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> Derivative:  # fmt: skip
        """``cotangentᵀ J`` per input; the cotangent is shaped like the output.
        ``verify``: see :meth:`compute`."""
        req = _core.compute_request(
            fn, inputs, ["vjp"], wrt=wrt, batched=batched, dtype=dtype, cotangent=cotangent,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["vjp"]

    async def jvp(
        self, fn: str, inputs: Inputs, tangents: Inputs, *,
        wrt: str | Sequence[str] | None = None, batched: bool = False,
        dtype: str | None = None, verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """``J · tangent``, shaped like the output; one tangent per ``wrt`` input.
        ``verify``: see :meth:`compute`."""
        req = _core.compute_request(
            fn, inputs, ["jvp"], wrt=wrt, batched=batched, dtype=dtype, tangents=tangents,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["jvp"]

    async def hvp(
        self, fn: str, inputs: Inputs, vector: Inputs, *,
        wrt: str | Sequence[str] | None = None, batched: bool = False,
        dtype: str | None = None, verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | Literal["auto"] | None = None,
    ) -> Derivative:  # fmt: skip
        """``H · vector`` per input (forward-over-reverse). ``verify``: see
        :meth:`compute`."""
        req = _core.compute_request(
            fn, inputs, ["hvp"], wrt=wrt, batched=batched, dtype=dtype, vector=vector,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return (await self._compute(req, timeout))["hvp"]

    async def check(
        self, fn: str, inputs: Inputs | None = None, *, wrt: str | Sequence[str] | None = None,
        grad: Claim | Mapping[str, Claim] | None = None,
        jacobian: Claim | Mapping[str, Claim] | None = None,
        hessian: Claim | Mapping[Any, Claim] | None = None, order: int = 1,
        atol: float | None = None, rtol: float | None = None, eps: float | None = None,
        fast: bool | None = None, batched: bool = False,
        sample: Sample | Mapping[str, Sample] | None = None, dtype: str | None = None,
        seed: int = 0, timeout: float | None = None,
    ) -> CheckReport:  # fmt: skip
        """Check derivatives; returns a :class:`CheckReport`.

        Without claims, autograd is checked against central finite differences
        (float64, gradcheck's tolerances by default). With ``grad=``,
        ``jacobian=`` or ``hessian=`` (function-language source, or numbers), the
        claim is checked against autograd at ``inputs`` or at points drawn by
        ``sample=``.
        """
        req = _core.check_request(
            fn, inputs, wrt=wrt, grad=grad, jacobian=jacobian, hessian=hessian, order=order,
            atol=atol, rtol=rtol, eps=eps, fast=fast, batched=batched, sample=sample,
            dtype=dtype, seed=seed,
        )  # fmt: skip
        return _core.decode_check(await self._rpc.check(req, timeout))

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """Version, workers, limits and the function table of the server."""
        msg = await self._rpc.get_server_info(pb.GetServerInfoRequest(), timeout)
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
        """Submit a batch job: a dict, or the path of a YAML or JSON job file.

        Submitting again with the same ``idempotency_key`` returns the same job
        (the same key with a different spec raises AlreadyExistsError).
        """
        req = jobspec.load(job, name=name, idempotency_key=idempotency_key)
        return AsyncJob(self._rpc, (await self._rpc.submit_job(req, timeout)).id)

    def job(self, job_id: str) -> AsyncJob:
        """A handle on an existing job (raises NotFoundError on first use if unknown)."""
        return AsyncJob(self._rpc, job_id)

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
        req: pb.ListJobsRequest | None = _core.list_jobs_request(states, page_size)
        while req is not None:
            req = _core.next_page(req, await self._rpc.list_jobs(req, timeout), out)
        return out
