"""The one mapping from failures to gRPC status, human message and details.

Handlers raise (or let through) whatever failed; :func:`to_status` decides the
status in this one place, and :func:`guard` applies it to every RPC so that no
handler ever leaks a traceback to a caller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.errors import RETRY_STREAM_KEY, SPEC_COLUMN_KEY, SPEC_LINE_KEY
from gradserve_server import calls, memory
from gradserve_workers import lang
from gradserve_workers.registry import UnknownFunctionError
from gradserve_workers.tasks import ChunkError

log = logging.getLogger("gradserve.server")


class ServiceError(Exception):
    """A failure with a known status; ``field`` names the request field at fault."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
        retry_stream: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.line = line
        self.column = column
        self.retry_stream = retry_stream


def invalid(message: str, field: str | None = None) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, field=field)


def exhausted(message: str, field: str | None = None) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, field=field)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def aborted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def deadline(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def correlation_id() -> str:
    """What an internal error is known by in the log and to its caller: the call's
    request id (which the caller also gets in trailing metadata), or a fresh one
    outside a call (a job's task)."""
    return calls.request_id() or uuid.uuid4().hex[:12]


def internal_message(incident: str, detail: str = "") -> str:
    """What the caller of a call that failed by our fault is told."""
    return f"internal error {incident}; see the server log" + (f" ({detail})" if detail else "")


def from_chunk_error(error: ChunkError, field: str = "function") -> ServiceError:
    code = {
        "spec": grpc.StatusCode.INVALID_ARGUMENT,
        "invalid": grpc.StatusCode.INVALID_ARGUMENT,
        "limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
    }.get(error.kind, grpc.StatusCode.INTERNAL)
    message = error.message
    if code is grpc.StatusCode.INTERNAL:
        incident = correlation_id()
        message = internal_message(incident, f"the worker failed: {error.message}")
        log.error("internal error %s: the worker failed: %s\n%s", incident, error.message,
                  error.traceback or "(no traceback)")  # fmt: skip
    return ServiceError(
        code, message, field=field, line=error.line, column=error.column,
        retry_stream=error.limit == "message",  # a unary reply over the message limit
    )  # fmt: skip


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    line: int | None = None
    column: int | None = None
    field: str | None = None
    retry_stream: bool = False

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        meta: list[tuple[str, str]] = []
        if self.line is not None and self.column is not None:
            meta += [(SPEC_LINE_KEY, str(self.line)), (SPEC_COLUMN_KEY, str(self.column))]
        if self.retry_stream:
            meta.append((RETRY_STREAM_KEY, "1"))
        return tuple(meta)

    def rich(self) -> status_pb2.Status:
        """The google.rpc.Status with a BadRequest detail naming the field."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field and self.code.value[0] == code_pb2.INVALID_ARGUMENT:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field, description=self.message
                        )
                    ]
                )
            )
            status.details.append(detail)
        return status


def to_status(error: BaseException) -> Status:
    """Every failure's status, message and position. The only such mapping."""
    if isinstance(error, ServiceError):
        return Status(
            error.code, error.message, error.line, error.column, error.field, error.retry_stream
        )
    if isinstance(error, lang.LimitExceededError):
        return Status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(error),
            getattr(error, "line", None),
            getattr(error, "column", None),
            "function",
        )
    if isinstance(error, UnknownFunctionError):  # "@NAME" that is not enabled
        text = f"{error.message}; {error.hint}" if error.hint else error.message
        return Status(grpc.StatusCode.NOT_FOUND, text, field="function")
    if isinstance(error, lang.SpecError):
        return Status(
            grpc.StatusCode.INVALID_ARGUMENT, str(error), error.line, error.column, "function"
        )
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, "the computation ran past its deadline")
    ray_status = _ray_status(error)
    if ray_status is not None:
        return ray_status
    incident = correlation_id()
    log.error("internal error %s", incident, exc_info=error)
    return Status(grpc.StatusCode.INTERNAL, internal_message(incident))


def _ray_status(error: BaseException) -> Status | None:
    try:
        from ray import exceptions as rex
    except ImportError:  # pragma: no cover - ray is a server dependency
        return None
    if isinstance(error, rex.GetTimeoutError):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, "the computation ran past its deadline")
    lost = rex.ActorDiedError | rex.ActorUnavailableError | rex.ObjectLostError | rex.RaySystemError
    if isinstance(error, lost):
        return Status(grpc.StatusCode.UNAVAILABLE, f"a worker was lost: {error}")
    return None


async def abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    status = to_status(error)
    memory.trim_soon()  # a failed call may leave large freed buffers behind
    # internal ones are logged in full; the rest in the call's one line (interceptor.py)
    if status.code is not grpc.StatusCode.INTERNAL:
        log.debug("%s: %s", status.code.name, status.message.splitlines()[0])
    # added to what is already set (the request id): set_trailing_metadata replaces
    kept = tuple(context.trailing_metadata() or ())
    context.set_trailing_metadata(kept + status.trailing_metadata() + _rich_metadata(status))
    await context.abort(status.code, status.message)


def _rich_metadata(status: Status) -> tuple[tuple[str, Any], ...]:
    rich = rpc_status.to_status(status.rich())
    return tuple(
        (k, v) for k, v in (rich.trailing_metadata or ()) if k == "grpc-status-details-bin"
    )


class Undecodable:
    """What the server's deserializer hands a handler for bytes that are not the
    method's message (gRPC would answer UNKNOWN for them): :func:`guard` and
    :func:`decoded` turn it into INVALID_ARGUMENT."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error

    def refusal(self) -> ServiceError:
        return invalid(f"the request is not a valid {self.type_name} message: {self.error}")


def safe_deserializer(message_type: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, RecursionError) as error:  # not a message, or nested too deep
            return Undecodable(message_type.DESCRIPTOR.name, error)

    return deserialize


def decoded(message: Any) -> Any:
    """A streamed request's part, refused if it did not decode."""
    if isinstance(message, Undecodable):
        raise message.refusal()
    return message


H = TypeVar("H", bound=Callable[..., Any])


def _raise_if_caller_left(context: grpc.aio.ServicerContext) -> None:
    """A call whose client cancelled it is CANCELLED, whatever failed meanwhile: the
    cancel races the handler, which may see a write fail inside gRPC
    (ExecuteBatchError) or a request stream end short ("bytes ... never arrived
    whole") before its task is cancelled, and neither is a fault of anyone's."""
    if context.cancelled():
        raise asyncio.CancelledError


def guard(handler: H) -> H:
    """Map any failure of a unary or request-streaming handler to its status."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, decoded(request), context)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if _is_abort(error):
                raise
            _raise_if_caller_left(context)
            await abort(context, error)

    return wrapper  # type: ignore[return-value]


def guard_stream(handler: H) -> H:
    """The same for response-streaming handlers (async generators)."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            async for item in handler(self, decoded(request), context):
                yield item
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if _is_abort(error):
                raise
            _raise_if_caller_left(context)
            await abort(context, error)

    return wrapper  # type: ignore[return-value]


def _is_abort(error: BaseException) -> bool:
    # context.abort raises this to unwind the handler; it must pass through
    return isinstance(error, grpc.aio.AbortError)
