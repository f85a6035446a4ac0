"""gRPC server metrics for every RPC the daemon serves: requests, status codes and latency.

:class:`RpcMetricsInterceptor` goes first in the server's interceptor list, so it sees every call and the status
the inner interceptors give it (an ``UNAUTHENTICATED`` refusal, a domain error mapped to its code, ``INTERNAL``):

* ``nessa_grpc_server_started_total{grpc_service,grpc_method,grpc_type}`` when a call starts;
* ``nessa_grpc_server_handled_total{...,grpc_code}`` when it ends, with its status code (``OK`` on success;
  ``CANCELLED`` when the client went away from a stream);
* ``nessa_grpc_server_handling_seconds{...,grpc_code}``: start to status (for a server stream: to its last
  message).

The label names are those of go-grpc-prometheus and py-grpc-prometheus; the metric families live in the
daemon's registry (:data:`nessa.metrics.STORAGE_REGISTRY`). Every method of the services named at construction
has its ``started`` and ``handled{grpc_code="OK"}`` series at zero from the first scrape, so ``increase()`` sees
the first call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from nessa.metrics import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED
from nessa.services.storage.interceptors import rewrap_handler
from nessa.v1 import storage_pb2

__all__ = ["RpcMetricsInterceptor"]

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def _split(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


def _type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming and server_streaming:
        return "bidi_stream"
    if client_streaming:
        return "client_stream"
    if server_streaming:
        return "server_stream"
    return "unary"


def _code(context: grpc.ServicerContext, default: str) -> str:
    """The status the call ended with: the one a handler set (``abort``, ``set_code``), else ``default``."""
    code = context.code()  # type: ignore[attr-defined]  # grpc >= 1.38 (experimental API); None when unset
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return default


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Count and time every RPC by service, method, type and status code.

    Args:
        services: service descriptors whose methods get their series at zero up front (default: ``nessa.v1.Storage``).
    """

    def __init__(self, services: Iterable[ServiceDescriptor] | None = None) -> None:
        if services is None:
            services = storage_pb2.DESCRIPTOR.services_by_name.values()
        for service in services:
            for method in service.methods:
                labels = {
                    "grpc_service": service.full_name,
                    "grpc_method": method.name,
                    "grpc_type": _type(method.client_streaming, method.server_streaming),
                }
                GRPC_STARTED.labels(**labels)
                GRPC_HANDLED.labels(**labels, grpc_code="OK")

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler of every call with the counting and timing."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split(handler_call_details.method)
        labels = {
            "grpc_service": service,
            "grpc_method": method,
            "grpc_type": _type(handler.request_streaming, handler.response_streaming),
        }

        def done(start: float, code: str) -> None:
            GRPC_HANDLED.labels(**labels, grpc_code=code).inc()
            GRPC_HANDLING_SECONDS.labels(**labels, grpc_code=code).observe(time.perf_counter() - start)

        def wrap(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                def stream_behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    GRPC_STARTED.labels(**labels).inc()
                    start, code = time.perf_counter(), "UNKNOWN"
                    try:
                        yield from behaviour(request, context)
                        code = _code(context, "OK")
                    except GeneratorExit:  # the client went away; gRPC closes the response iterator
                        code = _code(context, "CANCELLED")
                        raise
                    except BaseException:
                        code = _code(context, "UNKNOWN")
                        raise
                    finally:
                        done(start, code)

                return stream_behaviour

            def unary_behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                GRPC_STARTED.labels(**labels).inc()
                start, code = time.perf_counter(), "UNKNOWN"
                try:
                    response = behaviour(request, context)
                    code = _code(context, "OK")
                    return response
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    raise
                finally:
                    done(start, code)

            return unary_behaviour

        return rewrap_handler(handler, wrap)
