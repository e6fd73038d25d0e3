"""What the server knows about the call it is handling: a context variable.

The interceptor (interceptor.py) sets it as a call starts; handlers read the
caller's identity from it and add what only they know (the op, points, chunks),
and the interceptor writes it into the call's log line and metrics at the end.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass, field
from typing import Any

from gradserve.errors import REQUEST_ID_KEY  # the SDK reads it into its errors
from gradserve_server.auth import NOBODY, Identity

__all__ = ["REQUEST_ID_KEY", "Call", "begin", "current", "identity", "note", "request_id"]


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Call:
    rpc: str
    request_id: str = field(default_factory=new_request_id)
    # set by the interceptor once the call is admitted; until then it may do nothing
    identity: Identity = NOBODY
    # read when the call starts: asking a finished call's context for it can crash grpc
    peer: str = ""
    # filled in by handlers: op, points, chunks, job, verdict
    notes: dict[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "gradserve_call", default=None
)


def begin(call: Call) -> None:
    _current.set(call)


def current() -> Call | None:
    return _current.get()


def identity() -> Identity:
    """The caller; outside of a call, :data:`NOBODY` (no rights: fail closed)."""
    call = _current.get()
    return call.identity if call is not None else NOBODY


def request_id() -> str | None:
    call = _current.get()
    return call.request_id if call is not None else None


def note(**fields: Any) -> None:
    """Add fields to the current call's log line (and metric labels: op, verdict)."""
    call = _current.get()
    if call is not None:
        call.notes.update(fields)
