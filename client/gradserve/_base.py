"""The pure logic shared by Client and AsyncClient: building requests, decoding replies.

Nothing here does I/O; the two clients differ only in how they move messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from gradserve import shm, wire
from gradserve._claims import Claim
from gradserve._claims import claim as _claim
from gradserve._claims import claimed as _claimed
from gradserve.errors import (
    DataLossError,
    FailedPreconditionError,
    GradserveError,
    InvalidArgumentError,
    NotFoundError,
)
from gradserve.results import (
    OP_NAMES,
    CheckReport,
    ComputeResult,
    Metadata,
    TaskResult,
    shape_outputs,
)
from gradserve.sampling import Sample
from gradserve.v1 import gradserve_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Requests with more tensor bytes than this go through the streaming call.
STREAM_THRESHOLD_BYTES = 1024 * 1024
# The receive limit of the client's channel; larger replies are streamed.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Set by the server on a unary reply that would be over its message limit.
RETRY_STREAM_KEY = "gradserve-retry-stream"

_JACOBIAN_MODES: dict[str, Any] = {
    "auto": pb.JACOBIAN_MODE_AUTO,
    "forward": pb.JACOBIAN_MODE_FORWARD,
    "reverse": pb.JACOBIAN_MODE_REVERSE,
}
_CHECK_KINDS: dict[str, Any] = {
    "grad": pb.CHECK_KIND_CLAIMED_GRAD,
    "jacobian": pb.CHECK_KIND_CLAIMED_JACOBIAN,
}

Inputs = Mapping[str, Any] | Any


def _call_form(op: str) -> str:
    return f"{op}(fn, inputs)"


def _dtype(dtype: str | None, op: str) -> Any:
    if dtype is None:
        return pb.DTYPE_UNSPECIFIED
    if dtype not in wire.DTYPE_NAMES:
        raise InvalidArgumentError(f"{_call_form(op)}: dtype must be 'float32' or 'float64'")
    return wire.DTYPE_NAMES[dtype]


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


@dataclass(frozen=True)
class TLS:
    """How to reach a server over TLS: each field optional, paths to PEM files.

    ``ca``: the CA bundle that signed the server's certificate (default: the
    system's CAs); ``cert`` and ``key``: this client's certificate and key, for a
    server that asks for them (mutual TLS); ``server_name``: the name to verify in
    the server's certificate when it differs from the address's host.

    >>> TLS(ca="ca.pem").ca
    'ca.pem'
    """

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    server_name: str | None = None

    @classmethod
    def from_env(cls) -> TLS | None:
        """From $GRADSERVE_TLS_CA / _CERT / _KEY / _SERVER_NAME; None when none is set."""
        names = ("CA", "CERT", "KEY", "SERVER_NAME")
        values = [os.environ.get(f"GRADSERVE_TLS_{n}") or None for n in names]
        return cls(*values) if any(values) else None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgumentError(
                "TLS: a client certificate needs its key, and a key its cert"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "CA bundle"),
            private_key=_read_pem(self.key, "client key"),
            certificate_chain=_read_pem(self.cert, "client certificate"),
        )


def _read_pem(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise GradserveError(f"TLS: cannot read the {what} {path}: {error.strerror}") from None


def channel_security(
    tls: TLS | bool | None,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """Credentials (None: plaintext) and channel options for ``tls``."""
    if tls is None:
        tls = TLS.from_env()
    if tls is None or tls is False:
        return None, []
    if tls is True:
        tls = TLS()
    if not isinstance(tls, TLS):
        raise InvalidArgumentError("tls must be gradserve.TLS(...), True or None")
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return tls.credentials(), options


@dataclass(frozen=True)
class OutgoingCompute:
    """A compute request as headers plus its arrays in slot order (see the .proto),
    so each transport copies the bytes once: into the unary message, or into pieces."""

    header: pb.ComputeRequest
    arrays: list[np.ndarray]
    # this call's shared_memory= (None: the client's)
    shared_memory: bool | str | None = None

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
        for piece in wire.split_pieces(blobs):
            yield pb.ComputeRequestPart(piece=piece)


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
        return BaseClient._decode_compute(self._header, blobs)


class BaseClient:
    """Configuration and pure request/response logic."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        tls: TLS | bool | None = None,
        shared_memory: bool | str = False,
    ) -> None:
        self.address = address or os.environ.get("GRADSERVE_ADDRESS") or DEFAULT_ADDRESS
        self.shared_memory = shm.mode(shared_memory, "Client")
        self._segments: shm.Segments | None = None
        # why "auto" went back to the wire for good (the server is not on this host)
        self.shared_memory_off: str | None = None
        token = token if token is not None else os.environ.get("GRADSERVE_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.timeout = timeout
        self._credentials, security_options = channel_security(tls)
        self._channel_options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *security_options,
        ]

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    # ------------------------------------------------------------- compute

    def _compute_request(
        self,
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
        shared_memory: bool | str | None = None,
    ) -> OutgoingCompute:
        op = ops[0] if len(ops) == 1 else "compute"
        if shared_memory is not None:
            shared_memory = shm.mode(shared_memory, _call_form(op))
        if not isinstance(fn, str):
            raise InvalidArgumentError(f"{_call_form(op)}: fn must be source text, e.g. 'sin(x)'")
        unknown = [o for o in ops if o not in OP_NAMES]
        if unknown:
            raise InvalidArgumentError(
                f"{_call_form(op)}: unknown operation {unknown[0]!r}; use one of {list(OP_NAMES)}"
            )
        if mode not in _JACOBIAN_MODES:
            raise InvalidArgumentError(
                f"{_call_form(op)}: mode must be one of {list(_JACOBIAN_MODES)}, not {mode!r}"
            )
        req = pb.ComputeRequest(
            function=fn,
            ops=[OP_NAMES[o] for o in ops],
            wrt=_wrt(wrt),
            batched=batched,
            dtype=_dtype(dtype, op),
            jacobian_mode=_JACOBIAN_MODES[mode],
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

    # ------------------------------------------------------------- shared memory

    def _shared_mode(self, req: OutgoingCompute) -> bool | str:
        """Whether this call goes by shared memory: True, "auto" or False."""
        chosen = self.shared_memory if req.shared_memory is None else req.shared_memory
        if chosen == "auto" and self.shared_memory_off is not None:
            return False
        return chosen

    def _shared_layout(self, req: OutgoingCompute) -> tuple[shm.SharedRequest, list[shm.Segment]]:
        if self._segments is None:
            self._segments = shm.Segments()
        return shm.layout(req.header, req.arrays, self._segments)

    def _shared_refused(self, error: GradserveError, chosen: bool | str, first: bool) -> bool:
        """After a refusal of a shared-memory call: True to register again and retry
        (the server restarted and forgot the region), False to go by the wire
        ("auto" and the server cannot map this host's memory); else raises."""
        if isinstance(error, NotFoundError) and "shared-memory region" in error.message and first:
            assert self._segments is not None
            self._segments.forget_registrations()
            return True
        if isinstance(error, FailedPreconditionError) and chosen == "auto":
            self.shared_memory_off = error.message
            return False
        raise error

    @staticmethod
    def _shared_result(shared: shm.SharedRequest, resp: pb.ComputeResponse) -> ComputeResult:
        return ComputeResult(
            outputs=shape_outputs(resp.results, shared.results(resp)),
            metadata=Metadata._from_proto(resp.metadata),
        )

    @staticmethod
    def _decode_compute(
        resp: pb.ComputeResponse, blobs: Sequence[bytes] | None = None
    ) -> ComputeResult:
        """Arrays zero-copy over the reply's bytes (or over a streamed reply's blobs)."""
        arrays = [
            wire.decode(t, f"result {i}", None if blobs is None else blobs[i])
            for i, t in enumerate(wire.result_slots(resp.results))
        ]
        return ComputeResult(
            outputs=shape_outputs(resp.results, arrays),
            metadata=Metadata._from_proto(resp.metadata),
        )

    # ------------------------------------------------------------- checks

    def _check_request(
        self,
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
        given = [
            k
            for k, v in (("grad", grad), ("jacobian", jacobian), ("hessian", hessian))
            if _claimed(v)
        ]
        if len(given) > 1:
            raise InvalidArgumentError(f"{call}: give one of grad=, jacobian=, hessian=, not both")
        wrt_names = _wrt(wrt)
        options = pb.CheckOptions(order=order, seed=seed)
        for field, value in (("atol", atol), ("rtol", rtol), ("eps", eps)):
            if value is not None:
                setattr(options, field, float(value))
        if fast is not None:
            options.fast = fast
        req = pb.CheckRequest(
            function=fn, wrt=wrt_names, batched=batched, dtype=_dtype(dtype, "check")
        )
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
        if _claimed(grad) or _claimed(jacobian):
            kind = "grad" if _claimed(grad) else "jacobian"
            req.kind = _CHECK_KINDS[kind]
            req.claims.extend(self._claims(grad if kind == "grad" else jacobian, wrt_names, call))
        elif _claimed(hessian):
            req.kind = pb.CHECK_KIND_CLAIMED_HESSIAN
            req.claims.extend(self._claims(hessian, wrt_names, call))
        else:
            req.kind = pb.CHECK_KIND_FINITE_DIFFERENCE
        return req

    @staticmethod
    def _claims(claims: Any, wrt: list[str], call: str) -> list[pb.Claim]:
        if not isinstance(claims, Mapping):  # one claim: source text, or numbers
            if len(wrt) > 1:
                raise InvalidArgumentError(
                    f"{call}: one claim but wrt names {len(wrt)} inputs; give a dict by input"
                )
            return [_claim(wrt[0] if wrt else "", "", claims, call)]
        out = []
        for key, source in claims.items():
            if isinstance(key, tuple):
                first, second = key
            elif isinstance(key, str) and "," in key:
                first, second = (k.strip() for k in key.split(",", 1))
            else:
                first, second = key, ""
            out.append(_claim(first, second, source, call))
        return out

    @staticmethod
    def _decode_check(resp: pb.CheckResponse) -> CheckReport:
        return CheckReport._from_proto(resp.report, resp.metadata)

    # ------------------------------------------------------------- jobs

    @staticmethod
    def _task_result(header: pb.TaskResult, pieces: Sequence[pb.TensorPiece]) -> TaskResult:
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

    # ------------------------------------------------------------- public operations
    # Written once for both clients: each builds its request with the pure
    # logic above and hands it to ``_run_compute`` / ``_run_check``; the sync
    # Client returns the result, the AsyncClient an awaitable of it.

    def _run_compute(self, req: OutgoingCompute, pick: str | None, timeout: float | None) -> Any:
        raise NotImplementedError

    def _run_check(self, req: pb.CheckRequest, timeout: float | None) -> Any:
        raise NotImplementedError

    def compute(
        self,
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
        timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:
        """Several operations in one call; returns a :class:`ComputeResult`.

        Operations share work where they can (``value`` and ``grad`` in one pass).
        ``verify=True`` certifies every derivative by a second route (forward
        against reverse mode) before it is returned, ``False`` never, ``None`` where
        that is cheap; ``metadata.certificate`` says how well the routes agreed, and
        a disagreement raises :class:`~gradserve.errors.InternalError`.
        """
        req = self._compute_request(
            fn, inputs, list(ops), wrt=wrt, batched=batched, dtype=dtype, mode=mode,
            chunk_size=chunk_size, cotangent=cotangent, tangents=tangents, vector=vector,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, None, timeout)

    def value(
        self, fn: str, inputs: Inputs, *, batched: bool = False, dtype: str | None = None,
        verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """``f(inputs)``; with ``batched=True`` one row per point. A value has no
        derivative to certify: ``verify`` is accepted for symmetry and ignored."""
        req = self._compute_request(
            fn, inputs, ["value"], batched=batched, dtype=dtype, verify=verify,
            shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "value", timeout)

    def grad(
        self, fn: str, inputs: Inputs, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, verify: bool | None = None,
        timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """The gradient of a scalar function: one array per ``wrt`` input.

        One array when there is one input (or one ``wrt`` name), else a dict.
        ``verify``: see :meth:`compute`.
        """
        req = self._compute_request(
            fn, inputs, ["grad"], wrt=wrt, batched=batched, dtype=dtype, verify=verify,
            shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "grad", timeout)

    def jacobian(
        self, fn: str, inputs: Inputs, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, mode: str = "auto",
        chunk_size: int | None = None, verify: bool | None = None,
        timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """``out_shape + in_shape`` per input; ``mode`` is auto, forward or reverse.
        ``verify``: see :meth:`compute`."""
        req = self._compute_request(
            fn, inputs, ["jacobian"], wrt=wrt, batched=batched, dtype=dtype, mode=mode,
            chunk_size=chunk_size, verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "jacobian", timeout)

    def hessian(
        self, fn: str, inputs: Inputs, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, chunk_size: int | None = None,
        verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """``in_shape + in_shape``; with several inputs a nested dict ``H[a][b]``.
        ``verify``: see :meth:`compute`."""
        req = self._compute_request(
            fn, inputs, ["hessian"], wrt=wrt, batched=batched, dtype=dtype,
            chunk_size=chunk_size, verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "hessian", timeout)

    def vjp(
        self, fn: str, inputs: Inputs, cotangent: Any, *, wrt: str | Sequence[str] | None = None,
        batched: bool = False, dtype: str | None = None, verify: bool | None = None,
        timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """``cotangentᵀ J`` per input; the cotangent is shaped like the output.
        ``verify``: see :meth:`compute`."""
        req = self._compute_request(
            fn, inputs, ["vjp"], wrt=wrt, batched=batched, dtype=dtype, cotangent=cotangent,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "vjp", timeout)

    def jvp(
        self, fn: str, inputs: Inputs, tangents: Inputs, *,
        wrt: str | Sequence[str] | None = None, batched: bool = False,
        dtype: str | None = None, verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """``J · tangent``, shaped like the output; one tangent per ``wrt`` input.
        ``verify``: see :meth:`compute`."""
        req = self._compute_request(
            fn, inputs, ["jvp"], wrt=wrt, batched=batched, dtype=dtype, tangents=tangents,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "jvp", timeout)

    def hvp(
        self, fn: str, inputs: Inputs, vector: Inputs, *,
        wrt: str | Sequence[str] | None = None, batched: bool = False,
        dtype: str | None = None, verify: bool | None = None, timeout: float | None = None,
        shared_memory: bool | str | None = None,
    ) -> Any:  # fmt: skip
        """``H · vector`` per input (forward-over-reverse). ``verify``: see
        :meth:`compute`."""
        req = self._compute_request(
            fn, inputs, ["hvp"], wrt=wrt, batched=batched, dtype=dtype, vector=vector,
            verify=verify, shared_memory=shared_memory,
        )  # fmt: skip
        return self._run_compute(req, "hvp", timeout)

    def check(
        self, fn: str, inputs: Inputs | None = None, *, wrt: str | Sequence[str] | None = None,
        grad: Claim | Mapping[str, Claim] | None = None,
        jacobian: Claim | Mapping[str, Claim] | None = None,
        hessian: Claim | Mapping[Any, Claim] | None = None, order: int = 1,
        atol: float | None = None, rtol: float | None = None, eps: float | None = None,
        fast: bool | None = None, batched: bool = False,
        sample: Sample | Mapping[str, Sample] | None = None, dtype: str | None = None,
        seed: int = 0, timeout: float | None = None,
    ) -> Any:  # fmt: skip
        """Check derivatives; returns a :class:`CheckReport`.

        Without claims, autograd is checked against central finite differences
        (float64, gradcheck's tolerances by default). With ``grad=``,
        ``jacobian=`` or ``hessian=`` (function-language source), the claim is
        checked against autograd at ``inputs`` or at points drawn by ``sample=``.
        """
        req = self._check_request(
            fn, inputs, wrt=wrt, grad=grad, jacobian=jacobian, hessian=hessian, order=order,
            atol=atol, rtol=rtol, eps=eps, fast=fast, batched=batched, sample=sample,
            dtype=dtype, seed=seed,
        )  # fmt: skip
        return self._run_check(req, timeout)
