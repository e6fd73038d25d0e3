"""Every gradserve RPC passes here: request id, authentication, one log line, metrics.

The interceptor wraps each handler so that the wrapper runs in the call's own
task: it sets the call's context (calls.py) before the handler runs, returns the
request id in trailing metadata, refuses a missing, unknown or doubled token with
UNAUTHENTICATED, and when the call ends writes one structured log line (request
id, tenant, RPC, op, points, chunks, status, milliseconds) and updates the
metrics. The health and reflection services pass untouched (probes carry no
token, and would only add noise).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from gradserve_server import calls, metrics
from gradserve_server.auth import ANONYMOUS, Authenticator, Identity
from gradserve_server.calls import REQUEST_ID_KEY, Call

log = logging.getLogger("gradserve.requests")

_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_TOKEN_HINT = " (the SDK sends Client(token=...) or $GRADSERVE_TOKEN)"


def _discard(data: bytes) -> None:
    return None


def _status(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int) and code:  # some grpc versions keep the number
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if error is not None and not isinstance(error, grpc.aio.AbortError) else "OK"


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator | None = None) -> None:
        self.auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith(_OPEN):
            return handler
        rpc = method.rsplit("/", 1)[-1]
        if self.auth is None:  # no tokens: a single-user server, every caller sees all
            return self._wrap(handler, rpc, ANONYMOUS)
        tokens = [v for k, v in (details.invocation_metadata or ()) if k == "authorization"]
        # decided here, from the metadata, before gRPC parses a (maybe 16 MiB) request
        return self._wrap(handler, rpc, self.auth.identify(tokens))

    # ------------------------------------------------------------- one call

    async def _admit(
        self, call: Call, who: Identity | str, context: grpc.aio.ServicerContext
    ) -> None:
        calls.begin(call)
        call.peer = context.peer()
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        if isinstance(who, str):
            metrics.AUTH_FAILURES.inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, who + _TOKEN_HINT)
        else:
            call.identity = who

    def _end(
        self,
        call: Call,
        context: grpc.aio.ServicerContext,
        started: float,
        error: BaseException | None,
    ) -> None:
        seconds = time.perf_counter() - started
        status = _status(context, error)
        notes = call.notes
        op = str(notes.get("op", ""))
        metrics.REQUESTS.labels(call.rpc, op, status).inc()
        metrics.REQUEST_SECONDS.labels(call.rpc, op, status).observe(seconds)
        if "points" in notes:
            metrics.REQUEST_POINTS.labels(call.rpc, op).inc(int(notes["points"]))
        if "chunks" in notes:
            metrics.REQUEST_CHUNKS.labels(call.rpc, op).inc(int(notes["chunks"]))
        if "verdict" in notes:
            metrics.CHECK_VERDICTS.labels(notes["verdict"]).inc()
        fields: dict[str, Any] = {
            "request_id": call.request_id,
            "tenant": call.identity.label,
            "rpc": call.rpc,
            **notes,
            "status": status,
            "ms": round(seconds * 1000, 2),
            "peer": call.peer,
        }
        if status != "OK":
            details = context.details() or ""
            fields["error"] = details.splitlines()[0][:300] if details else ""
        log.info("request", extra={"fields": fields})

    # ------------------------------------------------------------- handler wrapping

    def _wrap(
        self, handler: grpc.RpcMethodHandler, rpc: str, who: Identity | str
    ) -> grpc.RpcMethodHandler:
        """``who``: the caller, or why it is refused; a refused call's request bytes
        are dropped unparsed, and the handler never runs."""
        received = metrics.RECEIVED_BYTES.labels(rpc)
        sent = metrics.SENT_BYTES.labels(rpc)
        deserialize = handler.request_deserializer if not isinstance(who, str) else _discard
        serialize = handler.response_serializer

        def counted_in(data: bytes) -> Any:
            received.inc(len(data))
            return deserialize(data) if deserialize is not None else data

        def counted_out(message: Any) -> bytes:
            data: bytes = serialize(message) if serialize is not None else message
            sent.inc(len(data))
            return data

        if handler.response_streaming:
            inner_stream = handler.unary_stream or handler.stream_stream

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                call, started, error = Call(rpc), time.perf_counter(), None
                try:
                    await self._admit(call, who, context)
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._end(call, context, started, error)

            async def writing(request: Any, context: grpc.aio.ServicerContext) -> None:
                # a handler that writes its stream itself (context.write) and returns None
                call, started, error = Call(rpc), time.perf_counter(), None
                try:
                    await self._admit(call, who, context)
                    await inner_stream(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._end(call, context, started, error)

            behaviour: Any = streaming if inspect.isasyncgenfunction(inner_stream) else writing
        else:
            inner_unary = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call, started, error = Call(rpc), time.perf_counter(), None
                try:
                    await self._admit(call, who, context)
                    return await inner_unary(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._end(call, context, started, error)

            behaviour = unary
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        return handler._replace(  # type: ignore[attr-defined,no-any-return]
            request_deserializer=counted_in,
            response_serializer=counted_out,
            unary_unary=behaviour if kind == "unary_unary" else None,
            unary_stream=behaviour if kind == "unary_stream" else None,
            stream_unary=behaviour if kind == "stream_unary" else None,
            stream_stream=behaviour if kind == "stream_stream" else None,
        )
