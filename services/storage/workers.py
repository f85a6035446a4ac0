"""Stream worker processes (``--workers N``): streams served from several processes that share the daemon's port.

gRPC Python runs every handler under one interpreter lock, so one process streams on about one core. With
``workers = N > 1`` the daemon (the *primary*) binds its port with ``SO_REUSEPORT`` and starts ``N - 1`` worker
processes (spawned, as gRPC's multiprocessing example requires: no gRPC state crosses a fork) that bind the same
port; the kernel spreads incoming connections over the N processes. Each worker

* serves ``StreamSamples`` itself, from its own read-only view of the datasets (LMDB maps are shared through the
  page cache) and the selections the primary saved (``<state_dir>/selections``, written before Select replies);
* forwards every other ``nessa.v1.Storage`` call, bytes unchanged and with the caller's metadata (the token), to the
  primary over a loopback-only port of the primary's, so selection jobs, sessions and proxies live in one place;
* answers health checks and reflection itself, and sends its number as ``x-nessa-worker`` initial metadata on every
  stream (the primary sends ``0``).

A stream's cursor is independent of the process that served it: a stream resumed through another worker continues
exactly once. The emulated link (``--link-rate``) is shared: its buckets live in shared memory. Limits: each worker
exports no ``/metrics`` of its own (the primary's counters cover what the primary serves), and the per-client stream
limit is per process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nessa.errors import FailedPreconditionError
from nessa.records import Selection
from nessa.services.storage.catalog import Catalog
from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.link import Link
from nessa.services.storage.selection_store import SelectionStore
from nessa.services.storage.slots import fair_server
from nessa.v1 import storage_pb2

__all__ = ["WORKER_METADATA", "WorkerPool", "run_worker", "shared_link_cells"]

log = logging.getLogger("nessa.storage.workers")

SERVICE = storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name
#: Initial-metadata key of a stream: the number of the process serving it (0: the primary).
WORKER_METADATA = "x-nessa-worker"
_NOT_FORWARDED = {"StreamSamples"}
_HOP_HEADERS = ("user-agent", "grpc-", ":")


class _SavedSelections:
    """What StreamSamples needs of the selection service: selections by id, from the primary's saved ones."""

    def __init__(self, store: SelectionStore) -> None:
        self.store = store

    def get(self, selection_id: str) -> Selection:
        return self.store.get(selection_id)


def _forwarded_metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(_HOP_HEADERS)]


def _forwarders(channel: grpc.Channel) -> dict[str, grpc.RpcMethodHandler]:
    """One raw-bytes handler per Storage method but StreamSamples, relaying the call to ``channel``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, method in storage_pb2.DESCRIPTOR.services_by_name["Storage"].methods_by_name.items():
        if name in _NOT_FORWARDED:
            continue
        path = f"/{SERVICE}/{name}"
        if method.client_streaming and not method.server_streaming:
            upstream_su = channel.stream_unary(path)

            def stream_unary(requests: Iterable[bytes], context: grpc.ServicerContext, call: Any = upstream_su) -> Any:
                try:
                    return call(iter(requests), metadata=_forwarded_metadata(context), timeout=context.time_remaining())
                except grpc.RpcError as exc:
                    context.abort(exc.code(), exc.details() or "")

            handlers[name] = grpc.stream_unary_rpc_method_handler(stream_unary)
        elif not method.client_streaming and not method.server_streaming:
            upstream_uu = channel.unary_unary(path)

            def unary_unary(request: bytes, context: grpc.ServicerContext, call: Any = upstream_uu) -> Any:
                try:
                    return call(request, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
                except grpc.RpcError as exc:
                    context.abort(exc.code(), exc.details() or "")

            handlers[name] = grpc.unary_unary_rpc_method_handler(unary_unary)
        else:  # no such Storage method today; refuse to start rather than serve it wrongly
            raise RuntimeError(f"the stream workers cannot forward {name}: teach services/storage/workers.py")
    return handlers


def run_worker(
    config: DaemonConfig,
    index: int,
    port: int,
    primary: str,
    link_cells: tuple[Any, Any] | None,
    ready: Any,
    stop: Any,
) -> None:
    """A stream worker process's body: serve on ``port`` (shared) until ``stop`` is set or the primary is gone.

    Args:
        config: the daemon's configuration.
        index: this worker's number (1..N-1).
        port: the primary's port, bound here with ``SO_REUSEPORT``.
        primary: the primary's loopback address for forwarded calls.
        link_cells: the emulated link's shared bucket states, or ``None`` for no pacing.
        ready: a queue: ``(index, pid, "")`` once serving, ``(index, pid, error)`` on failure.
        stop: an event the primary sets to stop the workers.
    """
    from nessa.services.storage.servicer import StorageServicer

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    # Ctrl-C reaches the whole process group: the primary alone decides when the workers stop (it sets `stop`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    try:
        cfg = replace(config, port=port, metrics_port=None)
        catalog = Catalog(cfg.data_dir)
        catalog.refresh()
        selections = _SavedSelections(
            SelectionStore(cfg.state_path / "selections", cfg.selection_cache_bytes, cfg.max_saved_selections)
        )
        rate = cfg.link_bytes_per_second
        link = Link(rate, cells=link_cells) if rate is not None else None
        server, slots, control = fair_server(cfg, thread_prefix=f"nessa-w{index}", reuseport=True)
        channel = grpc.insecure_channel(
            primary,
            options=[
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ],
        )
        servicer = StorageServicer(cfg, catalog, None, selections, link=link, worker=index)  # type: ignore[arg-type]
        handlers = _forwarders(channel)
        handlers["StreamSamples"] = grpc.unary_stream_rpc_method_handler(
            servicer.StreamSamples,
            request_deserializer=storage_pb2.StreamRequest.FromString,
            response_serializer=lambda data: data,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{cfg.host}:{port}"
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
        if bound != port:
            raise FailedPreconditionError(f"worker {index} could not share port {port} (got {bound})")
        slots.watchdog.start()
        server.start()
        for name in ("", SERVICE):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except Exception as exc:  # reported to the primary, which fails its start with it
        ready.put((index, os.getpid(), f"{type(exc).__name__}: {exc}"))
        return
    ready.put((index, os.getpid(), ""))
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the primary died without stopping us: do not keep its port
            break
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.stop(cfg.grace_seconds).wait()
    slots.watchdog.stop()
    control.shutdown(wait=False, cancel_futures=True)
    channel.close()


class WorkerPool:
    """The primary's handle on its stream workers.

    Args:
        config: the daemon's configuration (``workers - 1`` processes are started).
        link_cells: the emulated link's shared bucket states, or ``None``.
    """

    def __init__(self, config: DaemonConfig, link_cells: tuple[Any, Any] | None) -> None:
        self.config = config
        self.link_cells = link_cells
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = self._ctx.Event()
        self.processes: list[Any] = []
        self.pids: dict[int, int] = {}
        self._lock = threading.Lock()

    def start(self, port: int, primary: str, timeout: float = 120.0) -> None:
        """Start the workers on ``port`` and wait until each serves.

        Raises:
            FailedPreconditionError: a worker failed to start (its error is named) or did not start in time.
        """
        ready = self._ctx.Queue()
        for index in range(1, self.config.workers):
            proc = self._ctx.Process(
                target=run_worker,
                args=(self.config, index, port, primary, self.link_cells, ready, self._stop),
                name=f"nessa-stream-worker-{index}",
                daemon=True,
            )
            proc.start()
            self.processes.append(proc)
        deadline = time.monotonic() + timeout
        while len(self.pids) < len(self.processes):
            left = deadline - time.monotonic()
            try:
                index, pid, error = ready.get(timeout=max(0.1, left))
            except Exception:
                if left > 0 and all(p.is_alive() for p in self.processes):
                    continue
                self.stop()
                raise FailedPreconditionError(
                    f"{len(self.processes) - len(self.pids)} stream worker(s) did not start within {timeout:.0f} s; "
                    "run with --workers 1 and check the log"
                ) from None
            if error:
                self.stop()
                raise FailedPreconditionError(f"stream worker {index} failed to start: {error}")
            self.pids[index] = pid
        log.info("%d stream worker(s) serving on port %d: pids %s", len(self.pids), port, sorted(self.pids.values()))

    def stop(self, timeout: float | None = None) -> None:
        """Ask the workers to finish their streams and exit; kill those still running after ``timeout``."""
        self._stop.set()
        wait = self.config.grace_seconds + 5 if timeout is None else timeout
        deadline = time.monotonic() + wait
        for proc in self.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.processes = []

    def alive(self) -> int:
        """Workers running."""
        return sum(p.is_alive() for p in self.processes)


def shared_link_cells() -> tuple[Any, Any]:
    """Shared-memory states for the two directions of the emulated link (created before the workers start)."""
    ctx = multiprocessing.get_context("spawn")
    return ctx.Value("d", float("-inf")), ctx.Value("d", float("-inf"))
