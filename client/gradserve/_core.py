"""The pure logic shared by Client and AsyncClient: requests built from a call's
arguments, replies decoded into the SDK's results. Nothing here does I/O or knows
gRPC; the two clients differ only in how they move the messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradserve import shm, wire
from gradserve._claims import Claim, claimed, claims_for
from gradserve.errors import DataLossError, InvalidArgumentError
from gradserve.names import CHECK_KINDS, CLAIM_KINDS, DTYPES, JACOBIAN_MODES, JOB_STATES, OPS
from gradserve.results import (
    CheckReport,
    ComputeResult,
    JobStatus,
    Metadata,
    TaskResult,
    shape_outputs,
)
from gradserve.sampling import Sample
from gradserve.v1 import gradserve_pb2 as pb

# Requests with more tensor bytes than this go through the streaming call.
STREAM_THRESHOLD_BYTES = 1024 * 1024

Inputs = Mapping[str, Any] | Any


def _call_form(op: str) -> str:
    return f"{op}(fn, inputs)"


def _dtype(dtype: str | None, op: str) -> Any:
    if dtype is None:
        return pb.DTYPE_UNSPECIFIED
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"{_call_form(op)}: dtype must be one of {list(DTYPES)}")
    return DTYPES[dtype]


def _named_arrays(values: Inputs, what: str, op: str, dtype: str | None) -> dict[str, np.ndarray]:
    """A mapping name -> array-like, or one bare array-like under the name ''."""
    # the server binds '' to the function's only input (or only wrt input)
    items = list(values.items()) if isinstance(values, Mapping) else [("", values)]
    arrays = {}
    for name, value in items:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"{_call_form(op)}: {what} names must be strings")
        where = f"{_call_form(op)}: {what} {name!r}" if name else f"{_call_form(op)}: {what}"
        try:
            arrays[name] = wire.as_float_array(value, dtype=dtype, where=where)
        except wire.WireError as exc:
            raise InvalidArgumentError(str(exc)) from None
    return arrays


def _verify(verify: bool | None, op: str) -> Any:
    if verify is None:
        return pb.VERIFY_DEFAULT
    if not isinstance(verify, bool):
        raise InvalidArgumentError(
            f"{_call_form(op)}: verify must be True, False or None (the server's default)"
        )
    return pb.VERIFY_ON if verify else pb.VERIFY_OFF


def _wrt(wrt: str | Sequence[str] | None) -> list[str]:
    if wrt is None:
        return []
    if isinstance(wrt, str):
        return [wrt]
    return list(wrt)


# ----------------------------------------------------------------- compute


@dataclass(frozen=True)
class OutgoingCompute:
    """A compute request as headers plus its arrays in slot order (see the .proto),
    so each transport copies the bytes once: into the unary message, or into pieces."""

    header: pb.ComputeRequest
    arrays: list[np.ndarray]
    # this call's shared_memory= (None: the client's)
    shared_memory: shm.Choice | None = None

    @property
    def wants_stream(self) -> bool:
        return sum(a.nbytes for a in self.arrays) > STREAM_THRESHOLD_BYTES

    def unary(self) -> pb.ComputeRequest:
        req = pb.ComputeRequest()
        req.CopyFrom(self.header)
        for tensor, arr in zip(wire.request_slots(req), self.arrays, strict=True):
            tensor.data = arr.tobytes()
        return req

    def parts(self) -> Iterator[pb.ComputeRequestPart]:
        yield pb.ComputeRequestPart(header=self.header)
        blobs = [arr.data.cast("B") for arr in self.arrays]
        points = [a.shape[0] if a.ndim else -1 for a in self.arrays]
        if self.header.batched and len(set(points)) == 1 and points[0] > 0:
            # row by row across tensors: the server starts on the first points at once
            pieces = wire.split_rows(blobs, points[0])
        else:
            pieces = wire.split_pieces(blobs)
        for piece in pieces:
            yield pb.ComputeRequestPart(piece=piece)


def compute_request(
    fn: str,
    inputs: Inputs,
    ops: Sequence[str],
    *,
    wrt: str | Sequence[str] | None = None,
    batched: bool = False,
    dtype: str | None = None,
    mode: str = "auto",
    chunk_size: int | None = None,
    cotangent: Any = None,
    tangents: Inputs | None = None,
    vector: Inputs | None = None,
    verify: bool | None = None,
    shared_memory: shm.Choice | None = None,
) -> OutgoingCompute:
    op = ops[0] if len(ops) == 1 else "compute"
    if shared_memory is not None:
        shared_memory = shm.mode(shared_memory, _call_form(op))
    if not isinstance(fn, str):
        raise InvalidArgumentError(f"{_call_form(op)}: fn must be source text, e.g. 'sin(x)'")
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise InvalidArgumentError(
            f"{_call_form(op)}: unknown operation {unknown[0]!r}; use one of {list(OPS)}"
        )
    if mode not in JACOBIAN_MODES:
        raise InvalidArgumentError(
            f"{_call_form(op)}: mode must be one of {list(JACOBIAN_MODES)}, not {mode!r}"
        )
    req = pb.ComputeRequest(
        function=fn,
        ops=[OPS[o] for o in ops],
        wrt=_wrt(wrt),
        batched=batched,
        dtype=_dtype(dtype, op),
        jacobian_mode=JACOBIAN_MODES[mode],
        chunk_size=chunk_size or 0,
        verify=_verify(verify, op),
    )
    # headers only: the bytes stay in the arrays until the transport is chosen
    arrays: dict[tuple[str, str], np.ndarray] = {}
    for name, arr in _named_arrays(inputs, "input", op, dtype).items():
        req.inputs[name].CopyFrom(wire.encode(arr, with_data=False))
        arrays["inputs", name] = arr
    if cotangent is not None:
        (arr,) = _named_arrays(cotangent, "cotangent", op, dtype).values()
        req.cotangent.CopyFrom(wire.encode(arr, with_data=False))
        arrays["cotangent", ""] = arr
    for field, given in (("tangents", tangents), ("vector", vector)):
        if given is not None:
            for name, arr in _named_arrays(given, field, op, dtype).items():
                getattr(req, field)[name].CopyFrom(wire.encode(arr, with_data=False))
                arrays[field, name] = arr
    order = [("inputs", n) for n in sorted(req.inputs)]
    order += [("cotangent", "")] if req.HasField("cotangent") else []
    order += [("tangents", n) for n in sorted(req.tangents)]
    order += [("vector", n) for n in sorted(req.vector)]
    return OutgoingCompute(req, [arrays[key] for key in order], shared_memory)


def decode_compute(resp: pb.ComputeResponse, blobs: Sequence[bytes] | None = None) -> ComputeResult:
    """Arrays zero-copy over the reply's bytes (or over a streamed reply's blobs)."""
    arrays = [
        wire.decode(t, f"result {i}", None if blobs is None else blobs[i])
        for i, t in enumerate(wire.result_slots(resp.results))
    ]
    return _compute_result(resp, arrays)


def decode_shared(shared: shm.SharedRequest, resp: pb.ComputeResponse) -> ComputeResult:
    """A reply to a call by shared memory: its outputs copied out of the segment."""
    return _compute_result(resp, shared.results(resp))


def _compute_result(resp: pb.ComputeResponse, arrays: list[np.ndarray]) -> ComputeResult:
    return ComputeResult(
        outputs=shape_outputs(resp.results, arrays),
        metadata=Metadata._from_proto(resp.metadata),
    )


class StreamedReply:
    """A ComputeStream reply taken in as its parts arrive: each piece goes into its
    slot's place and its message is dropped, so a large reply is held once (plus one
    join per slot at the end), not as a list of messages and then again."""

    def __init__(self) -> None:
        self._header: pb.ComputeResponse | None = None
        self._assembler: wire.PieceAssembler | None = None

    def add(self, part: pb.ComputeResponsePart) -> None:
        if self._assembler is None:
            if not part.HasField("header"):
                raise InvalidArgumentError("ComputeStream: the reply did not start with a header")
            self._header = part.header
            slots = wire.result_slots(self._header.results)
            self._assembler = wire.PieceAssembler([wire.expected_bytes(t) for t in slots])
        elif part.HasField("metadata") and self._header is not None:
            self._header.metadata.CopyFrom(part.metadata)  # a pipelined reply's, whole call
        else:
            try:
                self._assembler.add(part.piece)
            except wire.WireError as exc:
                raise DataLossError(f"ComputeStream: the reply is damaged: {exc}") from None

    def result(self) -> ComputeResult:
        if self._header is None or self._assembler is None:
            raise InvalidArgumentError("ComputeStream: the reply did not start with a header")
        try:
            blobs = self._assembler.finish()
        except wire.WireError as exc:
            raise DataLossError(f"ComputeStream: the reply is damaged: {exc}") from None
        return decode_compute(self._header, blobs)


# ----------------------------------------------------------------- checks


def check_request(
    fn: str,
    inputs: Inputs | None,
    *,
    wrt: str | Sequence[str] | None = None,
    grad: Claim | Mapping[str, Claim] | None = None,
    jacobian: Claim | Mapping[str, Claim] | None = None,
    hessian: Claim | Mapping[Any, Claim] | None = None,
    order: int = 1,
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    fast: bool | None = None,
    batched: bool = False,
    sample: Sample | Mapping[str, Sample] | None = None,
    dtype: str | None = None,
    seed: int = 0,
) -> pb.CheckRequest:
    call = "check(fn, inputs)"
    if not isinstance(fn, str):
        raise InvalidArgumentError(f"{call}: fn must be source text, e.g. 'sin(x)'")
    if order not in (1, 2):
        raise InvalidArgumentError(f"{call}: order must be 1 or 2, not {order!r}")
    claims = {k: v for k, v in (("grad", grad), ("jacobian", jacobian), ("hessian", hessian))}
    given = [k for k, v in claims.items() if claimed(v)]
    if len(given) > 1:
        raise InvalidArgumentError(f"{call}: give one of grad=, jacobian=, hessian=, not both")
    wrt_names = _wrt(wrt)
    options = pb.CheckOptions(order=order, seed=seed)
    for field, value in (("atol", atol), ("rtol", rtol), ("eps", eps)):
        if value is not None:
            setattr(options, field, float(value))
    if fast is not None:
        options.fast = fast
    req = pb.CheckRequest(function=fn, wrt=wrt_names, batched=batched, dtype=_dtype(dtype, "check"))
    req.options.CopyFrom(options)
    if inputs is not None:
        for name, arr in _named_arrays(inputs, "input", "check", dtype).items():
            req.inputs[name].tensor.CopyFrom(wire.encode(arr))
    if sample is not None:
        samples = sample if isinstance(sample, Mapping) else {"": sample}
        for name, spec in samples.items():
            if not isinstance(spec, Sample):
                raise InvalidArgumentError(
                    f"{call}: sample must be gradserve.uniform(...) or gradserve.normal(...)"
                )
            req.inputs[name].sample.CopyFrom(spec._to_proto())
    if not req.inputs:
        raise InvalidArgumentError(f"{call}: give inputs, or sample= to draw points")
    if given:
        (kind,) = given
        req.kind = CLAIM_KINDS[kind]
        req.claims.extend(claims_for(claims[kind], wrt_names, call))
    else:
        req.kind = CHECK_KINDS["finite_difference"]
    return req


def decode_check(resp: pb.CheckResponse) -> CheckReport:
    return CheckReport._from_proto(resp.report, resp.metadata)


# ----------------------------------------------------------------- jobs


def job_states(states: Iterable[str] | str | None) -> list[Any]:
    """Job state names -> proto numbers, for ListJobs."""
    if states is None:
        return []
    names = [states] if isinstance(states, str) else list(states)
    out = []
    for name in names:
        if name not in JOB_STATES:
            raise InvalidArgumentError(
                f"jobs(states=...): unknown state {name!r}; use {list(JOB_STATES)}"
            )
        out.append(JOB_STATES[name])
    return out


def list_jobs_request(states: str | Sequence[str] | None, page_size: int) -> pb.ListJobsRequest:
    return pb.ListJobsRequest(page_size=page_size, states=job_states(states))


def next_page(
    req: pb.ListJobsRequest, resp: pb.ListJobsResponse, out: list[JobStatus]
) -> pb.ListJobsRequest | None:
    """Adds a ListJobs page to ``out``; the request for the next page, None after the last."""
    out += [JobStatus._from_proto(m) for m in resp.jobs]
    if not resp.next_page_token:
        return None
    req.page_token = resp.next_page_token
    return req


def task_result(header: pb.TaskResult, pieces: Sequence[pb.TensorPiece]) -> TaskResult:
    slots = wire.result_slots(header.results)
    blobs = wire.join_pieces(slots, pieces)
    where = f"task {header.task_id} result"
    arrays = [wire.decode(t, where, blob) for t, blob in zip(slots, blobs, strict=True)]
    return TaskResult(
        task_index=header.task_index,
        task_id=header.task_id,
        outputs=shape_outputs(header.results, arrays),
        check=CheckReport._from_proto(header.check) if header.HasField("check") else None,
        error=header.error.message if header.HasField("error") else None,
        error_code=header.error.code if header.HasField("error") else None,
        metadata=Metadata._from_proto(header.metadata),
    )


class ResultGrouper:
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
        """The last task's result at the end of the stream."""
        if self._header is None:
            return None
        done = task_result(self._header, self._pieces)
        self._header, self._pieces = None, []
        return done
