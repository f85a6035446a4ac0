"""The storage daemon process: gRPC server wiring, health, reflection, TLS, token, metrics, graceful shutdown.

:class:`StorageDaemon` builds everything from a :class:`DaemonConfig`. ``start()`` opens the datasets, binds the
port and starts serving with health ``NOT_SERVING``; it reports ``SERVING`` once the proxies are restored and the
OpenCL kernels are built. ``stop()`` turns health to ``NOT_SERVING``, keeps accepting calls for ``drain_seconds``
(so load balancers notice), then refuses new calls and gives in-flight ones ``grace_seconds`` before cancelling
them. :func:`serve` runs a daemon until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nessa.errors import FailedPreconditionError
from nessa.metrics import LINK_RATE, STORAGE_REGISTRY, STREAM_WORKERS, initialize_storage_series, start_metrics_server
from nessa.proxy.engine import ENGINES
from nessa.selection import available
from nessa.services.storage.catalog import Catalog
from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.distill_jobs import DistillService
from nessa.services.storage.engines import EnginePool
from nessa.services.storage.link import Link, format_rate
from nessa.services.storage.proxies import ProxyLimits, ProxyStore
from nessa.services.storage.rpc_metrics import RpcMetricsInterceptor
from nessa.services.storage.selection_store import SelectionStore
from nessa.services.storage.selections import SelectionService
from nessa.services.storage.servicer import StorageServicer, add_to_server
from nessa.services.storage.sessions import SessionStore
from nessa.services.storage.slots import SlotInterceptor, fair_server
from nessa.services.storage.workers import WorkerPool, shared_link_cells
from nessa.store.atomic import recover_stale
from nessa.v1 import storage_pb2

__all__ = ["SERVICE_NAME", "StorageDaemon", "serve"]

log = logging.getLogger("nessa.storage")

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name


class StorageDaemon:
    """One storage daemon (in-process); use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        config: what to serve and how.
    """

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.catalog = Catalog(config.data_dir)
        self.engines = EnginePool(config.engine)
        self.proxies = ProxyStore(
            self.catalog,
            config.state_path,
            config.max_proxy_bytes,
            limits=ProxyLimits(
                batch_size=config.proxy_batch_size,
                max_forward_bytes=config.max_forward_bytes,
                max_forward_macs=config.max_forward_macs,
            ),
            engine=self.engines.get,
        )
        self.selections = SelectionService(
            self.catalog,
            self.proxies,
            self.engines,
            SelectionStore(config.state_path / "selections", config.selection_cache_bytes, config.max_saved_selections),
            max_concurrent=config.max_concurrent_selections,
            proxy_batch_size=config.proxy_batch_size,
            sessions=SessionStore(config.state_path / "sessions", config.max_sessions),
        )
        rate = config.link_bytes_per_second
        cells = shared_link_cells() if rate is not None else None
        self.link = Link(rate, cells=cells) if rate is not None else None
        self.workers = WorkerPool(config, cells) if config.workers > 1 else None
        self.distill = DistillService(self.catalog, config.state_path / "distill")
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.port = 0
        self.internal_port = 0
        self.metrics_port: int | None = None
        self.ready = threading.Event()
        self._server: grpc.Server | None = None
        self._metrics: Any = None
        self._stopped = threading.Event()
        self.slots: SlotInterceptor | None = None
        self._control_pool: futures.ThreadPoolExecutor | None = None

    @property
    def address(self) -> str:
        """``host:port`` the daemon listens on."""
        return f"{self.config.host}:{self.port}"

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self, wait_ready: bool = True) -> StorageDaemon:
        """Open the datasets, bind and start serving; then restore proxies and build kernels.

        Args:
            wait_ready: return only once health is ``SERVING`` (else the warm-up runs in a background thread).

        Raises:
            FailedPreconditionError: the port cannot be bound.
        """
        cfg = self.config
        initialize_storage_series(available(), ENGINES)
        self._recover_staging()
        names = self.catalog.refresh()
        log.info("data directory %s: %d dataset(s): %s", cfg.data_dir, len(names), ", ".join(names) or "none")
        # Stream workers share the port; a lone daemon refuses a port in use instead.
        server, self.slots, self._control_pool = fair_server(
            cfg, thread_prefix="nessa-rpc", reuseport=self.workers is not None, first=[RpcMetricsInterceptor()]
        )
        failed = self.distill.restore()
        if failed:
            log.info("distillation jobs interrupted by the last stop, now reported: %s", ", ".join(failed))
        add_to_server(
            StorageServicer(cfg, self.catalog, self.proxies, self.selections, self.distill, link=self.link), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            port = 0
            log.debug("bind failed: %s", exc)
        if not port:
            raise FailedPreconditionError(
                f"cannot listen on {address}: the port is in use or the address is not local; choose another "
                "--port/--host (0 picks a free port)"
            )
        self.port = port
        self.slots.watchdog.start()
        if self.workers is not None:  # where the workers forward what they do not serve themselves
            self.internal_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        LINK_RATE.set(self.link.rate if self.link is not None else 0)
        STREAM_WORKERS.set(cfg.workers)
        if self.link is not None:
            log.info(
                "emulating a storage link of %s each way (--link-rate %s)", format_rate(self.link.rate), cfg.link_rate
            )
        if self.workers is not None:
            try:
                self.workers.start(port, f"127.0.0.1:{self.internal_port}")
            except Exception:
                server.stop(0)
                raise
        if cfg.metrics_port is not None:
            self._metrics = start_metrics_server(cfg.metrics_port, STORAGE_REGISTRY, host=cfg.host)
            self.metrics_port = int(self._metrics.server_port)
        log.info("listening on %s%s", self.address, " (TLS)" if cfg.tls else "")
        if wait_ready:
            self._warm()
        else:
            threading.Thread(target=self._warm_in_background, name="nessa-warmup", daemon=True).start()
        return self

    def _recover_staging(self) -> None:
        """Roll back (or finish) what ingests killed into the data directory left in hidden staging directories."""
        try:
            recovered = recover_stale(self.config.data_dir)
        except OSError as exc:  # e.g. a read-only data directory: serving still works
            log.warning("could not check the data directory for staging left by killed ingests: %s", exc)
            return
        for path in recovered:
            log.info("recovered %s, left by an ingest that was killed", path.name)

    def _warm_in_background(self) -> None:
        try:
            self._warm()
        except Exception:
            log.exception("warm-up failed: health stays NOT_SERVING; fix the cause above and restart the daemon")

    def _warm(self) -> None:
        restored = self.proxies.restore()
        if restored:
            log.info("restored proxies for: %s", ", ".join(restored))
        if self.config.warmup:
            t0 = time.perf_counter()
            self.engines.warmup()
            log.info("proxy engine %s ready in %.2f s", self.engines.default, time.perf_counter() - t0)
        if not self._stopped.is_set():
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
            self.ready.set()

    def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Shut down gracefully: NOT_SERVING, drain, refuse new calls, let in-flight ones finish within ``grace``.

        Args:
            grace: seconds in-flight calls may still run (default ``config.grace_seconds``).
            drain: seconds to keep serving while reporting NOT_SERVING (default ``config.drain_seconds``).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        # Telling health watchers NOT_SERVING writes to each Watch stream, and a watcher that stopped reading blocks
        # that write; give it a bounded time on its own thread, then stop the server (which cancels the stalled ones).
        notify = threading.Thread(target=self.health.enter_graceful_shutdown, name="nessa-health-shutdown", daemon=True)
        notify.start()
        notify.join(2.0)
        drain = self.config.drain_seconds if drain is None else drain
        if drain > 0 and self._server is not None:
            time.sleep(drain)
        if self.workers is not None:
            self.workers.stop(self.config.grace_seconds if grace is None else grace)
        if self._server is not None:
            g = self.config.grace_seconds if grace is None else grace
            if not self._server.stop(g).wait(g + 5.0):  # a handler stuck writing to a stalled stream
                log.warning("the gRPC server did not stop within %.1f s of its grace; stopping anyway", g + 5.0)
        if self.slots is not None:
            self.slots.watchdog.stop()
        if self._control_pool is not None:
            self._control_pool.shutdown(wait=False, cancel_futures=True)
        self.distill.stop(timeout=self.config.grace_seconds if grace is None else grace)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
        log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout``); True if it stopped."""
        if self._server is None:
            return True
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> StorageDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=0, drain=0)


def serve(config: DaemonConfig) -> int:
    """Run a daemon until SIGTERM or SIGINT, then shut down gracefully; returns the exit status.

    Prints one line ``nessa serve: listening on HOST:PORT (metrics on :PORT)`` to stdout once the port is bound.
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    from nessa.placement import place

    log.info("running on %s", place(config.cpus, torch_threads=False))
    daemon = StorageDaemon(config)
    try:
        daemon.start(wait_ready=False)
        metrics = f" (metrics on :{daemon.metrics_port})" if daemon.metrics_port is not None else ""
        print(f"nessa serve: listening on {daemon.address}{metrics}", flush=True)
        while not stop.wait(0.5):
            pass
        daemon.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("nessa serve: stopped", file=sys.stderr, flush=True)
    return 0
