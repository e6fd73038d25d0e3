"""Bearer-token check for every RPC but the health service (probes carry no token)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
    return context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or wrong token: send 'authorization: Bearer <token>' "
        "(the SDK does with Client(token=...) or GRADSERVE_TOKEN)",
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if method.startswith(_OPEN):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny_stream)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny_stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny)
        return grpc.unary_unary_rpc_method_handler(_deny)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await _deny(request, context)
    yield  # pragma: no cover - abort raised
