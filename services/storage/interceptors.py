"""The daemon's RPC boundary: bearer-token check, and the one mapping from domain errors to gRPC status codes.

:class:`ErrorInterceptor` wraps every handler (unary and streaming): a :class:`nessa.errors.NessaError` becomes the
status its ``status`` attribute names, with its message (which says what to fix); :class:`Cancelled` ends a call
whose client went away; anything else is a bug, logged with its traceback and returned as ``INTERNAL``.
:class:`TokenInterceptor` refuses calls without ``authorization: Bearer <token>`` (health checks excepted, so
orchestrators can probe a daemon without the secret).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from nessa.errors import NessaError
from nessa.metrics import RPC_CANCELLED, RPC_ERRORS
from nessa.services.storage.cancel import Cancelled

__all__ = ["HEALTH_PREFIX", "ErrorInterceptor", "TokenInterceptor", "status_code"]

log = logging.getLogger("nessa.storage")

HEALTH_PREFIX = "/grpc.health.v1.Health/"

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def status_code(error: NessaError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (``INTERNAL`` if its ``status`` names no code)."""
    return getattr(grpc.StatusCode, error.status, grpc.StatusCode.INTERNAL)


def _rpc_name(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


def rewrap_handler(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour, bool], Behaviour]
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is ``wrap(behaviour, response_streaming)``."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **kwargs)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Map domain errors to status codes, stop cancelled calls quietly, report bugs as ``INTERNAL``."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler of every call."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        rpc = _rpc_name(handler_call_details.method)

        def wrap(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                def stream_behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    try:
                        yield from behaviour(request, context)
                    except Exception as exc:
                        _fail(rpc, exc, context)

                return stream_behaviour

            def unary_behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behaviour(request, context)
                except Exception as exc:
                    _fail(rpc, exc, context)

            return unary_behaviour

        return rewrap_handler(handler, wrap)


def _fail(rpc: str, exc: Exception, context: grpc.ServicerContext) -> None:
    """End the call with the status that fits ``exc`` (``context.abort`` raises)."""
    if context.code() is not None:  # the handler already set a status (e.g. called abort)
        raise exc
    if isinstance(exc, Cancelled):
        RPC_CANCELLED.labels(rpc=rpc).inc()
        log.info("%s: stopped: the client cancelled or its deadline passed", rpc)
        context.abort(grpc.StatusCode.CANCELLED, str(exc))
    if isinstance(exc, NessaError):
        code = status_code(exc)
        message = str(exc)
    else:
        log.error("%s: internal error", rpc, exc_info=exc)
        code = grpc.StatusCode.INTERNAL
        message = (
            f"internal error in {rpc} ({type(exc).__name__}: {exc}); this is a bug in the storage daemon — "
            "report it with the daemon's log"
        )
    RPC_ERRORS.labels(rpc=rpc, code=code.name).inc()
    context.abort(code, message)


class TokenInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every call except health checks.

    Args:
        token: the shared secret; compared in constant time.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Pass authorized calls on; answer the others ``UNAUTHENTICATED``."""
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        given = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                break
        if given is not None and hmac.compare_digest(given, self._expected):
            return handler
        if given is None:
            message = "missing bearer token: send metadata 'authorization: Bearer <token>' (StorageClient(token=...))"
        else:
            message = "wrong bearer token: use the token the daemon was started with (--token or NESSA_TOKEN)"
        rpc = _rpc_name(handler_call_details.method)

        def wrap(_behaviour: Behaviour, streaming: bool) -> Behaviour:
            def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
                RPC_ERRORS.labels(rpc=rpc, code="UNAUTHENTICATED").inc()
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            if streaming:

                def refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    refuse(request, context)
                    yield from ()

                return refuse_stream
            return refuse

        return rewrap_handler(handler, wrap)
