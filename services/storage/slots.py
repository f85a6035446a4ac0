"""Fair RPC slots: no client, authenticated or not, can lock the others out of the daemon.

:class:`SlotInterceptor` sits after the token check (so an unauthenticated call is refused before it takes
anything) and enforces, per call:

* ``nessa.v1.Storage`` calls hold one of ``max_calls`` slots while they run (more get ``RESOURCE_EXHAUSTED``
  with the limit); health checks and reflection never take one: they run on the daemon's small control pool;
* a client (its address plus the ``x-nessa-client`` metadata value, if sent) may have at most
  ``max_streams_per_client`` streaming Storage calls (``StreamSamples``, ``PushProxy``) in progress;
* a streaming call whose client stops reading (a reply waits to be sent) or, for ``PushProxy``, stops sending
  (the daemon waits for the next chunk) for longer than ``idle_seconds`` is cancelled by :class:`IdleWatchdog`
  and counted in ``nessa_stalled_streams_total``; the client sees ``CANCELLED``;
* at most ``max_health_watches`` health ``Watch`` streams (which hold no thread) and ``max_reflection_streams``
  reflection streams (which hold a control-pool thread, and are also watched for idleness) are open at once.

Slots are released both when the handler returns and, in case gRPC drops a handler without finishing it, when
the call terminates (``context.add_callback``); release is idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc

from nessa.errors import BusyError
from nessa.metrics import STALLED_STREAMS
from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.interceptors import (
    HEALTH_PREFIX,
    ErrorInterceptor,
    TokenInterceptor,
    quote,
    rewrap_handler,
)
from nessa.wire import CLIENT_METADATA, RETRY_METADATA

__all__ = ["CLIENT_METADATA", "REFLECTION_PREFIX", "IdleWatchdog", "SlotInterceptor", "client_key"]

log = logging.getLogger("nessa.storage")

REFLECTION_PREFIX = "/grpc.reflection."
STORAGE_PREFIX = "/nessa.v1.Storage/"
_CLIENT_ID_CHARS = 64

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def client_key(context: grpc.ServicerContext) -> str:
    """Who a call comes from: the peer's address without its port, plus its ``x-nessa-client`` value if any."""
    peer = context.peer() or "unknown"
    host = peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_METADATA:
            text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
            return f"{host}/{text[:_CLIENT_ID_CHARS]}"
    return host


class _Counter:
    """A bounded count of things in progress, overall and per key."""

    def __init__(self, limit: int, per_key: int | None = None) -> None:
        self.limit = limit
        self.per_key = per_key
        self._lock = threading.Lock()
        self._total = 0
        self._by_key: dict[str, int] = {}

    def acquire(self, key: str = "") -> str | None:
        """Take one; ``None`` on success, else which limit is reached (``"total"`` or ``"client"``)."""
        with self._lock:
            if self._total >= self.limit:
                return "total"
            held = self._by_key.get(key, 0)
            if self.per_key is not None and held >= self.per_key:
                return "client"
            self._total += 1
            self._by_key[key] = held + 1
            return None

    def release(self, key: str = "") -> None:
        with self._lock:
            self._total -= 1
            left = self._by_key.get(key, 1) - 1
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._total


class _Hold:
    """One call's claim on counters, released exactly once."""

    def __init__(self, releases: list[Callable[[], None]]) -> None:
        self._releases = releases
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            releases, self._releases = self._releases, []
        for release in reversed(releases):
            release()


class _Activity:
    """When a streaming call started waiting on its client (``None`` while the daemon itself is working)."""

    __slots__ = ("context", "rpc", "waiting_since")

    def __init__(self, rpc: str, context: grpc.ServicerContext) -> None:
        self.rpc = rpc
        self.context = context
        self.waiting_since: float | None = None


class IdleWatchdog:
    """Cancels streaming calls that have waited on their client for longer than ``idle_seconds``.

    Args:
        idle_seconds: how long a stream may wait on its client.
    """

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = float(idle_seconds)
        self._active: set[_Activity] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the checking thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nessa-idle-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the checking thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        period = min(1.0, self.idle_seconds / 4)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                stalled = [
                    a for a in self._active if a.waiting_since is not None and now - a.waiting_since > self.idle_seconds
                ]
                for a in stalled:
                    self._active.discard(a)
            for a in stalled:
                STALLED_STREAMS.labels(rpc=a.rpc).inc()
                log.warning(
                    "%s: cancelled a stream whose client (%s) stopped reading or sending for over %.0f s",
                    a.rpc,
                    quote(a.context.peer()),
                    self.idle_seconds,
                )
                a.context.cancel()  # type: ignore[attr-defined]  # grpc's server context has cancel()

    def track(self, rpc: str, context: grpc.ServicerContext) -> _Activity:
        """Watch one call (until :meth:`forget`)."""
        activity = _Activity(rpc, context)
        with self._lock:
            self._active.add(activity)
        return activity

    def forget(self, activity: _Activity) -> None:
        """Stop watching a call."""
        with self._lock:
            self._active.discard(activity)


def _watched_replies(replies: Iterator[Any], activity: _Activity) -> Iterator[Any]:
    """``replies``, with the time each one waits to be taken by gRPC (sent to the client) marked as idle."""
    for reply in replies:
        activity.waiting_since = time.monotonic()
        yield reply
        activity.waiting_since = None


def _watched_requests(requests: Iterator[Any], activity: _Activity) -> Iterator[Any]:
    """``requests``, with the time spent waiting for the client's next message marked as idle."""
    iterator = iter(requests)
    while True:
        activity.waiting_since = time.monotonic()
        try:
            request = next(iterator)
        except StopIteration:
            return
        finally:
            activity.waiting_since = None
        yield request


def _refusal(message: str) -> BusyError:
    return BusyError(message)


class SlotInterceptor(grpc.ServerInterceptor):
    """Bound Storage calls, streams per client, idle streams, health watches and reflection streams.

    Args:
        max_calls: Storage calls in progress at once.
        max_streams_per_client: streaming Storage calls one client may have in progress.
        idle_seconds: how long a stream may wait on its client before it is cancelled.
        max_health_watches: health ``Watch`` streams open at once.
        max_reflection_streams: reflection streams open at once.
        control_pool: where health, reflection (and, through the token check, refusals) run.
    """

    def __init__(
        self,
        max_calls: int,
        max_streams_per_client: int,
        idle_seconds: float,
        max_health_watches: int,
        max_reflection_streams: int,
        control_pool: futures.ThreadPoolExecutor,
    ) -> None:
        self.calls = _Counter(max_calls)
        self.streams = _Counter(max_calls, per_key=max_streams_per_client)
        self.watches = _Counter(max_health_watches)
        self.reflections = _Counter(max_reflection_streams)
        self.watchdog = IdleWatchdog(idle_seconds)
        self._pool = control_pool

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap each call with the limits that apply to it."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rpc = method.rsplit("/", 1)[-1]
        if method.startswith(HEALTH_PREFIX):
            if handler.response_streaming:
                return self._health_watch(handler)
            return self._on_control_pool(handler)
        if method.startswith(REFLECTION_PREFIX):
            return self._limited(handler, rpc, self.reflections, control=True, limit_name="max_reflection_streams")
        return self._limited(handler, rpc, self.calls, control=False, limit_name="max_workers")

    def _on_control_pool(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def wrap(behaviour: Behaviour, _streaming: bool) -> Behaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                return behaviour(request, context)

            run.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
            return run

        return rewrap_handler(handler, wrap)

    def _health_watch(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behaviour = handler.unary_stream
        watches = self.watches

        def watch(request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:
            if watches.acquire() is not None:
                context.set_trailing_metadata(((RETRY_METADATA, "busy"),))
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many health Watch streams open (the limit is {watches.limit}, max_health_watches); "
                    "close one, or poll with Check",
                )
            hold = _Hold([lambda: watches.release()])
            if not context.add_callback(hold.release):
                hold.release()
            if send_response_callback is None:  # blocking server: a generator
                return behaviour(request, context)
            return behaviour(request, context, send_response_callback=send_response_callback)

        watch.experimental_non_blocking = getattr(behaviour, "experimental_non_blocking", False)  # type: ignore[attr-defined]
        watch.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
        return grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _claim(
        self, rpc: str, context: grpc.ServicerContext, counter: _Counter, limit_name: str, stream: bool
    ) -> _Hold:
        """Take a slot (and, for a Storage stream, the client's stream slot), or raise RESOURCE_EXHAUSTED."""
        if counter.acquire() is not None:
            raise _refusal(
                f"{rpc}: the daemon is serving its limit of {counter.limit} concurrent calls ({limit_name}); "
                "retry with backoff (StorageClient does) or raise the daemon's limit"
            )
        releases: list[Callable[[], None]] = [counter.release]
        if stream and counter is self.calls:
            key = client_key(context)
            refused = self.streams.acquire(key)
            if refused is not None:
                counter.release()
                limit = self.streams.per_key if refused == "client" else self.streams.limit
                raise _refusal(
                    f"{rpc}: this client already has {limit} streams in progress (max_streams_per_client); finish "
                    f"or cancel one first, or send a distinct '{CLIENT_METADATA}' metadata value per process"
                )
            releases.append(lambda: self.streams.release(key))
        hold = _Hold(releases)
        if not context.add_callback(hold.release):  # the call already ended
            hold.release()
        return hold

    def _limited(
        self, handler: grpc.RpcMethodHandler, rpc: str, counter: _Counter, control: bool, limit_name: str
    ) -> grpc.RpcMethodHandler:
        request_streaming = handler.request_streaming
        streaming_call = request_streaming or handler.response_streaming
        watchdog = self.watchdog
        claim = self._claim

        def wrap(behaviour: Behaviour, response_streaming: bool) -> Behaviour:
            if response_streaming:

                def stream_behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    hold = claim(rpc, context, counter, limit_name, stream=True)
                    activity = watchdog.track(rpc, context)
                    try:
                        if request_streaming:
                            request = _watched_requests(request, activity)
                        yield from _watched_replies(behaviour(request, context), activity)
                    finally:
                        watchdog.forget(activity)
                        hold.release()

                run: Behaviour = stream_behaviour
            else:

                def unary_behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                    hold = claim(rpc, context, counter, limit_name, stream=streaming_call)
                    activity = watchdog.track(rpc, context) if request_streaming else None
                    try:
                        if activity is not None:
                            request = _watched_requests(request, activity)
                        return behaviour(request, context)
                    finally:
                        if activity is not None:
                            watchdog.forget(activity)
                        hold.release()

                run = unary_behaviour
            if control:
                run.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
            return run

        return rewrap_handler(handler, wrap)


#: Control-pool threads beyond the reflection streams (health checks, token refusals).
CONTROL_THREADS = 4
#: Handler threads beyond the Storage slots (calls over a limit are refused on them).
SPARE_THREADS = 4


def fair_server(
    cfg: DaemonConfig, *, thread_prefix: str, reuseport: bool, first: Sequence[grpc.ServerInterceptor] = ()
) -> tuple[grpc.Server, SlotInterceptor, futures.ThreadPoolExecutor]:
    """A gRPC server with the daemon's interceptor chain: ``first``, the token check, errors, then the slots.

    Health, reflection and refusals run on a small control pool of their own, so Storage calls cannot starve them;
    the handler pool has one thread per Storage slot plus a few, so calls over a limit are refused at once. The
    caller registers its services, binds, and starts the watchdog (``slots.watchdog.start()``) with the server.

    Returns:
        The server, its slot interceptor and its control pool (shut it down after the server).
    """
    control = futures.ThreadPoolExecutor(
        max_workers=cfg.max_reflection_streams + CONTROL_THREADS, thread_name_prefix=f"{thread_prefix}-control"
    )
    slots = SlotInterceptor(
        max_calls=cfg.max_workers,
        max_streams_per_client=cfg.max_streams_per_client,
        idle_seconds=cfg.stream_idle_seconds,
        max_health_watches=cfg.max_health_watches,
        max_reflection_streams=cfg.max_reflection_streams,
        control_pool=control,
    )
    interceptors: list[grpc.ServerInterceptor] = list(first)
    if cfg.token:
        interceptors.append(TokenInterceptor(cfg.token, pool=control))  # before any slot is taken
    redact = tuple(str(p) for d in (cfg.data_dir, cfg.state_path) for p in {d, d.resolve()})
    interceptors += [ErrorInterceptor(redact), slots]  # the ErrorInterceptor maps slot refusals
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.max_workers + SPARE_THREADS, thread_name_prefix=thread_prefix),
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuseport else 0),
        ],
    )
    return server, slots, control
