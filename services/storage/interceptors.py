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
import re
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from nessa.errors import BusyError, InvalidArgumentError, NessaError
from nessa.metrics import CORRUPT_SAMPLES, RPC_CANCELLED, RPC_ERRORS
from nessa.services.storage.cancel import Cancelled
from nessa.store.checksum import SampleCorruptionError
from nessa.wire import RETRY_METADATA

__all__ = [
    "HEALTH_PREFIX",
    "MAX_MESSAGE_CHARS",
    "QUOTE_CHARS",
    "ErrorInterceptor",
    "TokenInterceptor",
    "Undecodable",
    "bounded",
    "lenient",
    "quote",
    "rewrap_handler",
    "status_code",
]

log = logging.getLogger("nessa.storage")

HEALTH_PREFIX = "/grpc.health.v1.Health/"

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def status_code(error: NessaError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (``INTERNAL`` if its ``status`` names no code)."""
    return getattr(grpc.StatusCode, error.status, grpc.StatusCode.INTERNAL)


def _rpc_name(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


def _behaviour(handler: grpc.RpcMethodHandler) -> Behaviour:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def rewrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behaviour, bool], Behaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is ``wrap(behaviour, response_streaming)``.

    The thread pool a behaviour asked for (``experimental_thread_pool``) is kept. A non-blocking behaviour (health
    ``Watch``: it returns at once and sends through a callback) cannot be wrapped as a function of its result, so
    its handler is returned unchanged. ``request_deserializer`` replaces the handler's when given.
    """
    original = _behaviour(handler)
    if getattr(original, "experimental_non_blocking", False):
        return handler
    kwargs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    wrapped = wrap(original, handler.response_streaming)
    pool = getattr(original, "experimental_thread_pool", None)
    if pool is not None and getattr(wrapped, "experimental_thread_pool", None) is None:
        wrapped.experimental_thread_pool = pool  # type: ignore[attr-defined]
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrapped, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrapped, **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)


#: Longest excerpt of client input quoted in an error message (the rest is elided, with its length).
QUOTE_CHARS = 80


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a client-sent value, cut to ``limit`` characters (saying how long it was) for error messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes | bytearray) else len(text)
    return f"{text[:limit]}... ({size} characters in all)"


class Undecodable:
    """A request message whose bytes did not parse (the ErrorInterceptor answers ``INVALID_ARGUMENT``)."""

    def __init__(self, size: int, error: str) -> None:
        self.size = size
        self.error = error

    def to_error(self, rpc: str) -> NessaError:
        """The ``INVALID_ARGUMENT`` error for this request."""
        return InvalidArgumentError(
            f"{rpc}: the request message ({self.size} bytes) is not a valid protobuf message of this RPC's request "
            f"type ({self.error}); send it with the nessa.v1 stubs (nessa.client.StorageClient)"
        )


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns an :class:`Undecodable` instead of raising (gRPC would answer ``INTERNAL``)."""
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or anything a corrupt message makes the parser raise
            return Undecodable(len(data), type(exc).__name__)

    return deserialize


def _decoded(requests: Iterator[Any], rpc: str) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Undecodable):
            raise request.to_error(rpc)
        yield request


class ErrorInterceptor(grpc.ServerInterceptor):
    """Map domain errors to status codes, stop cancelled calls quietly, report bugs as ``INTERNAL``.

    Every message sent is :func:`bounded`: long quoted client values are cut to a prefix, the total length is
    capped, and the server paths in ``redact`` (the data and state directories) are replaced by ``<data-dir>``.

    Args:
        redact: server paths that never appear in a message.
    """

    def __init__(self, redact: tuple[str, ...] = ()) -> None:
        self._redact = tuple(sorted({p for p in redact if p}, key=len, reverse=True))

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
        request_streaming = handler.request_streaming
        redact = self._redact

        def checked(request: Any) -> Any:
            if request_streaming:
                return _decoded(request, rpc)
            if isinstance(request, Undecodable):
                raise request.to_error(rpc)
            return request

        def wrap(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                def stream_behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    try:
                        yield from behaviour(checked(request), context)
                    except Exception as exc:
                        _fail(rpc, exc, context, redact)

                return stream_behaviour

            def unary_behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behaviour(checked(request), context)
                except Exception as exc:
                    _fail(rpc, exc, context, redact)

            return unary_behaviour

        return rewrap_handler(handler, wrap, request_deserializer=lenient(handler.request_deserializer))


#: Longest status message sent (longer ones keep their start and end): gRPC refuses trailers past 8-16 KiB.
MAX_MESSAGE_CHARS = 2000
#: A quoted value (a repr): the quote opens after a non-word character and closes before one, so the
#: apostrophe of "daemon's" is neither.
_QUOTED = re.compile(f"(?<!\\w)(?:'[^'\\n]{{{QUOTE_CHARS},}}'|\"[^\"\\n]{{{QUOTE_CHARS},}}\")(?!\\w)")


def _cut(match: re.Match[str]) -> str:
    text = match.group(0)
    return f"{text[: QUOTE_CHARS - 20]}...{text[0]} ({len(text) - 2} characters)"


def bounded(message: str, redact: tuple[str, ...] = ()) -> str:
    """``message`` with long quoted values cut to a prefix, server paths replaced, and its length capped."""
    for path in redact:
        if path:
            message = message.replace(path, "<data-dir>")
    message = _QUOTED.sub(_cut, message)
    if len(message) > MAX_MESSAGE_CHARS:
        keep = MAX_MESSAGE_CHARS // 2
        message = f"{message[:keep]} ... ({len(message) - 2 * keep} characters left out) ... {message[-keep:]}"
    return message


def _fail(rpc: str, exc: Exception, context: grpc.ServicerContext, redact: tuple[str, ...] = ()) -> None:
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
        if isinstance(exc, BusyError):
            context.set_trailing_metadata(((RETRY_METADATA, "busy"),))
        if isinstance(exc, SampleCorruptionError):
            CORRUPT_SAMPLES.labels(dataset=exc.dataset).inc(len(exc.indices))
            log.error("%s: %s", rpc, message)
    elif isinstance(exc, RecursionError | OverflowError | MemoryError):
        # Input too deep or too large for the code that read it: the client's to fix, not a bug to report.
        code = grpc.StatusCode.INVALID_ARGUMENT
        message = (
            f"{rpc}: the request is too deeply nested or holds a number too large to handle "
            f"({type(exc).__name__}); send smaller values"
        )
    else:
        log.error("%s: internal error", rpc, exc_info=exc)
        code = grpc.StatusCode.INTERNAL
        message = (
            f"internal error in {rpc} ({type(exc).__name__}: {quote(str(exc))}); this is a bug in the storage daemon — "
            "report it with the daemon's log"
        )
    RPC_ERRORS.labels(rpc=rpc, code=code.name).inc()
    context.abort(code, bounded(message, redact))


class TokenInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every call except health checks.

    A refused call's request is never parsed (undecodable garbage without a token is ``UNAUTHENTICATED``, not a
    decoding error), and its refusal runs on ``pool`` (the daemon's control pool), so it holds no RPC slot.

    Args:
        token: the shared secret; compared in constant time.
        pool: where refusals run (default: the server's pool).
    """

    def __init__(self, token: str, pool: futures.ThreadPoolExecutor | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._pool = pool

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

            behaviour: Behaviour = refuse
            if streaming:

                def refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    refuse(request, context)
                    yield from ()

                behaviour = refuse_stream
            if self._pool is not None:
                behaviour.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
            return behaviour

        return rewrap_handler(handler, wrap, request_deserializer=_raw)


def _raw(data: bytes) -> bytes:
    return data
