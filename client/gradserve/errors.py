"""The one exception tree of the SDK, and the one place gRPC statuses map onto it.

Every failure a user can see is a :class:`GradserveError`. The mapping from
``grpc.StatusCode`` lives in :data:`STATUS_TO_ERROR`; a test fails if any status
code is missing from it, so a new code never surfaces as a raw ``grpc.RpcError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GradserveError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidSpecError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
]


class GradserveError(Exception):
    """Root of every error the SDK raises.

    ``code`` is the gRPC status name (``"INVALID_ARGUMENT"``, ...) or ``None``
    for errors raised locally before any call was made. ``request_id`` is the
    server's id of the failed call (None when no server answered): quote it to
    whoever runs the server, whose log line for the call carries the same id.
    """

    code: str | None = None
    request_id: str | None = None

    def __init__(
        self, message: str, *, code: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if request_id is not None:
            self.request_id = request_id


class InvalidArgumentError(GradserveError, ValueError):
    """The request is malformed: bad inputs, shapes, options."""

    code = "INVALID_ARGUMENT"


class InvalidSpecError(InvalidArgumentError):
    """The function source is not valid in the function language.

    ``line`` and ``column`` are 1-based positions in the source.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int,
        column: int,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id)
        self.line = line
        self.column = column


class ResourceExhaustedError(GradserveError):
    """A limit was hit: source size, loop iterations, tensor size, message size."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(GradserveError, TimeoutError):
    """The call ran past its ``timeout`` (its Ray work is cancelled)."""

    code = "DEADLINE_EXCEEDED"


class NotFoundError(GradserveError, LookupError):
    """No such job."""

    code = "NOT_FOUND"


class UnavailableError(GradserveError, ConnectionError):
    """The server cannot be reached, or has no workers."""

    code = "UNAVAILABLE"


class UnauthenticatedError(GradserveError):
    """Missing or wrong token."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(GradserveError):
    code = "PERMISSION_DENIED"


class CancelledError(GradserveError):
    code = "CANCELLED"


class UnknownError(GradserveError):
    code = "UNKNOWN"


class AlreadyExistsError(GradserveError):
    code = "ALREADY_EXISTS"


class FailedPreconditionError(GradserveError):
    code = "FAILED_PRECONDITION"


class AbortedError(GradserveError):
    code = "ABORTED"


class OutOfRangeError(GradserveError):
    code = "OUT_OF_RANGE"


class UnimplementedError(GradserveError):
    code = "UNIMPLEMENTED"


class InternalError(GradserveError):
    code = "INTERNAL"


class DataLossError(GradserveError):
    code = "DATA_LOSS"


STATUS_TO_ERROR: dict[grpc.StatusCode, type[GradserveError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}

# The server puts the position of a function-language error in trailing
# metadata, so the SDK never has to parse it out of prose.
SPEC_LINE_KEY = "gradserve-spec-line"
SPEC_COLUMN_KEY = "gradserve-spec-column"
# Every call's id, in its trailing metadata (the server's log line has it too).
REQUEST_ID_KEY = "gradserve-request-id"
# Set by the server on a unary reply that would be over its message limit: the
# client sends the request again through the streaming call.
RETRY_STREAM_KEY = "gradserve-retry-stream"


class _RetryAsStream(ResourceExhaustedError):
    """A unary reply too large for one message; the clients retry it as a stream,
    so it reaches a user only if the streaming call is unavailable too."""


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Around every gRPC call of the SDK: a ``grpc.RpcError`` leaves as the SDK's error."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def from_rpc_error(error: grpc.RpcError) -> GradserveError:
    """Translate a gRPC error into the SDK's exception tree (the only place that does)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    trailing = {}
    if hasattr(error, "trailing_metadata"):
        trailing = dict(error.trailing_metadata() or ())
    request_id = trailing.get(REQUEST_ID_KEY)
    if RETRY_STREAM_KEY in trailing:
        return _RetryAsStream(details, code=code.name, request_id=request_id)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        line, column = trailing.get(SPEC_LINE_KEY), trailing.get(SPEC_COLUMN_KEY)
        if line is not None and column is not None:
            return InvalidSpecError(
                details, line=int(line), column=int(column), code=code.name, request_id=request_id
            )
    cls = STATUS_TO_ERROR.get(code, UnknownError)
    return cls(details, code=code.name if code is not None else None, request_id=request_id)
