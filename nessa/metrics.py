"""Every Prometheus metric NeSSA exports, defined once, in one registry per process.

Names follow Prometheus conventions: the ``nessa_`` prefix, base units (``_bytes``, ``_seconds``, ``_samples``)
before the ``_total`` of counters (``nessa_sent_bytes_total``), ``_ratio`` for 0-1 values. Labels stay
low-cardinality: dataset names, methods, run names, engines, kinds, RPC names and status codes — never sample ids,
epochs or selection ids.

Two registries, one per process kind, each served by its own process's ``/metrics``
(:func:`start_metrics_server`):

* :data:`STORAGE_REGISTRY`: the storage daemon's series (bytes, selections, proxies, the gRPC server metrics
  ``nessa_grpc_server_*`` that :mod:`nessa.services.storage.rpc_metrics` records for every RPC);
* :data:`TRAINER_REGISTRY`: the trainer's series ``nessa_trainer_*``, every one labelled ``method`` and ``run``
  (recorded through :class:`TrainerMetrics`), so one dashboard shows full data and CRAIG side by side.

Both also hold ``nessa_build_info`` and the client library's process, platform and GC collectors.

Bytes are counted as serialized protobuf bytes (``msg.ByteSize()``; gRPC framing and HTTP/2 headers excluded), as
the daemon hands each message to gRPC: for every call a client reads to its end this equals what the client
received; a stream the client cancels may also count messages already in flight that the client never read.

* ``kind="samples"``: the sample payload, the size of every ``SampleBatch.data`` blob sent;
* ``kind="metadata"``: the rest of every dataset-scoped reply (``SampleBatch`` minus its payload, ``Selection``,
  ``DatasetInfo``, ``ProxyAck``);
* ``kind="proxy"`` (received): the ``data`` bytes of every ``ProxyChunk`` received.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from nessa import __version__

__all__ = [
    "ACTIVE_SELECTIONS",
    "ACTIVE_STREAMS",
    "BYTES_FULL_EPOCH",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "CORRUPT_SAMPLES",
    "DATASET_SIZE",
    "DISTILL_DURATION",
    "DISTILL_JOBS",
    "DISTILL_REAL_BYTES_READ",
    "DISTILL_SYNTHETIC_BYTES_WRITTEN",
    "GRPC_HANDLED",
    "GRPC_HANDLING_SECONDS",
    "GRPC_STARTED",
    "PROXY_FORWARD_DURATION",
    "PROXY_FORWARD_SAMPLES",
    "PROXY_VERSION",
    "RPC_CANCELLED",
    "RPC_ERRORS",
    "SAMPLES_STREAMED",
    "SELECTIONS",
    "SELECTION_CACHE_BYTES",
    "SELECTION_DURATION",
    "SELECTION_OBJECTIVE",
    "SELECTION_SIZE",
    "SESSIONS",
    "SESSIONS_EVICTED",
    "STALLED_STREAMS",
    "STORAGE_REGISTRY",
    "TRAINER_REGISTRY",
    "TrainerMetrics",
    "initialize_storage_series",
    "start_metrics_server",
]

# Duration buckets from 1 ms to ~17 min: proxy batches are milliseconds, selections of large sets minutes.
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1000.0)  # fmt: skip
# Data-wait buckets: a trainer waiting more than a second per batch is badly starved.
_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# RPC latency buckets: health checks and describes are sub-millisecond, streams and selections seconds to minutes.
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 1000.0)  # fmt: skip

STORAGE_REGISTRY = CollectorRegistry()
"""The storage daemon's registry: what ``nessa serve`` serves on ``--metrics-port``."""
TRAINER_REGISTRY = CollectorRegistry()
"""The trainer's registry: what ``nessa train --metrics-port`` serves."""


def _process_collectors(registry: CollectorRegistry) -> None:
    """The client library's ``process_*``, ``python_info`` and ``python_gc_*`` series, as the default registry has."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)


def _build_info(registry: CollectorRegistry) -> Gauge:
    info = Gauge(
        "nessa_build_info",
        "Always 1: the NeSSA version and the Python this process runs (join on it to label other series).",
        ["version", "python_version"],
        registry=registry,
    )
    info.labels(version=__version__, python_version=platform.python_version()).set(1)
    return info


_process_collectors(STORAGE_REGISTRY)
_process_collectors(TRAINER_REGISTRY)
STORAGE_BUILD_INFO = _build_info(STORAGE_REGISTRY)
TRAINER_BUILD_INFO = _build_info(TRAINER_REGISTRY)

# --- storage daemon -------------------------------------------------------------------------------------------

BYTES_SENT = Counter(
    "nessa_sent_bytes_total",
    "Bytes the storage daemon sent to trainers: kind=samples is sample payload, kind=metadata the rest of each "
    "dataset-scoped reply (serialized protobuf bytes).",
    ["dataset", "kind"],
    registry=STORAGE_REGISTRY,
)
BYTES_RECEIVED = Counter(
    "nessa_received_bytes_total",
    "Bytes the storage daemon received from trainers (kind=proxy: proxy chunk data).",
    ["dataset", "kind"],
    registry=STORAGE_REGISTRY,
)
BYTES_FULL_EPOCH = Counter(
    "nessa_full_epoch_bytes_total",
    "Sample bytes a full pass over the candidates would have streamed, added once per Select: the full-data line "
    "to compare nessa_sent_bytes_total with.",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
DATASET_SIZE = Gauge(
    "nessa_dataset_size_bytes",
    "Stored sample bytes of each dataset the daemon serves.",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
SAMPLES_STREAMED = Counter(
    "nessa_streamed_samples_total",
    "Samples whose bytes the daemon streamed (a sample split into pieces counts once).",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
SELECTIONS = Counter(
    "nessa_selections_total",
    "Select calls answered, by method; cached=true when an identical earlier selection was returned.",
    ["dataset", "method", "cached"],
    registry=STORAGE_REGISTRY,
)
SELECTION_DURATION = Histogram(
    "nessa_selection_duration_seconds",
    "Wall time of a Select (reading, proxy forward and selector) by method.",
    ["method"],
    buckets=_SECONDS_BUCKETS,
    registry=STORAGE_REGISTRY,
)
DISTILL_DURATION = Histogram(
    "nessa_distill_duration_seconds",
    "Wall time of a finished Distill job (reading, expert training, matching, writing), by method.",
    ["method"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=STORAGE_REGISTRY,
)
DISTILL_JOBS = Counter(
    "nessa_distill_jobs_total",
    "Distill jobs that ended, by method and final state (done, failed, cancelled).",
    ["method", "state"],
    registry=STORAGE_REGISTRY,
)
DISTILL_REAL_BYTES_READ = Counter(
    "nessa_distill_read_real_bytes_total",
    "Sample bytes of real data Distill jobs read on the storage node (never sent to a trainer), by dataset.",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
DISTILL_SYNTHETIC_BYTES_WRITTEN = Counter(
    "nessa_distill_written_synthetic_bytes_total",
    "Sample bytes of the synthetic datasets (group and stages) Distill jobs wrote, by source dataset.",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
PROXY_FORWARD_DURATION = Histogram(
    "nessa_proxy_forward_duration_seconds",
    "Wall time of the proxy forward pass over the candidates of one Select, by engine.",
    ["engine"],
    buckets=_SECONDS_BUCKETS,
    registry=STORAGE_REGISTRY,
)
PROXY_FORWARD_SAMPLES = Counter(
    "nessa_proxy_forward_samples_total",
    "Samples the proxy ran over, by engine (a selector that reads only some candidates, like CREST's pools, "
    "has only those forwarded).",
    ["engine"],
    registry=STORAGE_REGISTRY,
)
SELECTION_SIZE = Gauge(
    "nessa_selection_size_samples",
    "Samples in the latest selection of a dataset by a method.",
    ["dataset", "method"],
    registry=STORAGE_REGISTRY,
)
SELECTION_OBJECTIVE = Gauge(
    "nessa_selection_objective",
    "Objective value of the latest selection of a dataset by a method (NaN when the method has none).",
    ["dataset", "method"],
    registry=STORAGE_REGISTRY,
)
PROXY_VERSION = Gauge(
    "nessa_proxy_version",
    "Version of the proxy the daemon holds for a dataset (-1: none).",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
ACTIVE_STREAMS = Gauge("nessa_active_streams", "StreamSamples calls in progress.", registry=STORAGE_REGISTRY)
LINK_RATE = Gauge(
    "nessa_link_rate_bytes_per_second",
    "Rate of the emulated storage link (--link-rate), per direction; 0 when the daemon does not pace.",
    registry=STORAGE_REGISTRY,
)
LINK_WAIT = Counter(
    "nessa_link_wait_seconds_total",
    "Seconds this process's calls waited for the emulated link (direction: send = streams, receive = proxies).",
    ["direction"],
    registry=STORAGE_REGISTRY,
)
STREAM_WORKERS = Gauge(
    "nessa_stream_workers",
    "Processes serving StreamSamples (--workers): this one and the stream workers that share its port.",
    registry=STORAGE_REGISTRY,
)
ACTIVE_SELECTIONS = Gauge("nessa_active_selections", "Select calls in progress.", registry=STORAGE_REGISTRY)
SELECTION_CACHE_BYTES = Gauge(
    "nessa_selection_cache_bytes",
    "Memory held by the daemon's cache of recent selections (indices and weights).",
    registry=STORAGE_REGISTRY,
)
SESSIONS = Gauge(
    "nessa_sessions", "Selection sessions whose selector state the daemon keeps.", registry=STORAGE_REGISTRY
)
SESSIONS_EVICTED = Counter(
    "nessa_sessions_evicted_total",
    "Selection sessions dropped, oldest first, to stay within the session limit.",
    registry=STORAGE_REGISTRY,
)
RPC_ERRORS = Counter(
    "nessa_rpc_errors_total",
    "RPCs that ended with an error status, by RPC and status code.",
    ["rpc", "code"],
    registry=STORAGE_REGISTRY,
)
RPC_CANCELLED = Counter(
    "nessa_rpc_cancelled_total",
    "RPCs whose work the daemon stopped because the client cancelled or its deadline passed.",
    ["rpc"],
    registry=STORAGE_REGISTRY,
)

# --- storage daemon: gRPC server metrics (recorded by nessa.services.storage.rpc_metrics) ----------------------
# Label names as go-grpc-prometheus and py-grpc-prometheus use them; the latency histogram adds grpc_code.
_GRPC_LABELS = ["grpc_service", "grpc_method", "grpc_type"]
GRPC_STARTED = Counter(
    "nessa_grpc_server_started_total",
    "RPCs the storage daemon started, by service, method and type (unary, server_stream, client_stream, bidi_stream).",
    _GRPC_LABELS,
    registry=STORAGE_REGISTRY,
)
GRPC_HANDLED = Counter(
    "nessa_grpc_server_handled_total",
    "RPCs the storage daemon completed, by service, method, type and status code (OK or the error).",
    [*_GRPC_LABELS, "grpc_code"],
    registry=STORAGE_REGISTRY,
)
GRPC_HANDLING_SECONDS = Histogram(
    "nessa_grpc_server_handling_seconds",
    "Wall time from an RPC's start to its status (for streams: to the last message), by method and status code.",
    [*_GRPC_LABELS, "grpc_code"],
    buckets=_RPC_BUCKETS,
    registry=STORAGE_REGISTRY,
)
CORRUPT_SAMPLES = Counter(
    "nessa_corrupt_samples_total",
    "Stored samples that failed their checksum when read (never sent), by dataset.",
    ["dataset"],
    registry=STORAGE_REGISTRY,
)
STALLED_STREAMS = Counter(
    "nessa_stalled_streams_total",
    "Streaming RPCs the daemon cancelled because the client stopped reading (or sending) past the idle timeout.",
    ["rpc"],
    registry=STORAGE_REGISTRY,
)

# --- trainer ---------------------------------------------------------------------------------------------------

_RUN = ["method", "run"]


class _TrainerFamilies:
    """The trainer's metric families in one registry (labelled ``method`` and ``run`` first)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.epoch_duration = Histogram(
            "nessa_trainer_epoch_duration_seconds",
            "Wall time of one training epoch (selection wait, streaming and SGD).",
            _RUN,
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.data_wait = Histogram(
            "nessa_trainer_data_wait_seconds",
            "Time the training loop waited for its next batch.",
            _RUN,
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.received_bytes = Counter(
            "nessa_trainer_received_bytes_total",
            "Bytes the trainer received from storage daemons, by dataset and kind (samples, metadata), counted as "
            "the daemon counts its nessa_sent_bytes_total.",
            [*_RUN, "dataset", "kind"],
            registry=registry,
        )
        self.trained_samples = Counter(
            "nessa_trainer_trained_samples_total",
            "Samples the trainer trained on.",
            [*_RUN, "dataset"],
            registry=registry,
        )
        self.energy = Counter(
            "nessa_trainer_energy_joules_total",
            "Energy of the run's processes (component: trainer, daemon; source: measured or estimated).",
            [*_RUN, "component", "source"],
            registry=registry,
        )
        self.loss = Gauge(
            "nessa_trainer_loss",
            "Mean loss of the latest epoch, by split (train, test).",
            [*_RUN, "split"],
            registry=registry,
        )
        self.accuracy = Gauge(
            "nessa_trainer_accuracy_ratio",
            "Accuracy (0-1) of the latest epoch, by split (train, test).",
            [*_RUN, "split"],
            registry=registry,
        )
        self.epoch = Gauge("nessa_trainer_epoch", "The epoch the trainer is in (0-based).", _RUN, registry=registry)
        self.subset_size = Gauge(
            "nessa_trainer_subset_size_samples",
            "Samples the trainer trained on in its latest epoch (the subset's size; the dataset's for full data).",
            [*_RUN, "dataset"],
            registry=registry,
        )
        self.run_info = Gauge(
            "nessa_trainer_run_info",
            "Always 1, one series per run this trainer runs: its method, run name, dataset, fraction and model.",
            [*_RUN, "dataset", "fraction", "model"],
            registry=registry,
        )


_FAMILIES: dict[int, _TrainerFamilies] = {}


def _families(registry: CollectorRegistry) -> _TrainerFamilies:
    key = id(registry)
    if key not in _FAMILIES:
        _FAMILIES[key] = _TrainerFamilies(registry)
    return _FAMILIES[key]


_families(TRAINER_REGISTRY)  # the families exist (HELP and TYPE) before a run binds its labels


class TrainerMetrics:
    """The trainer's series for one run: every series carries ``method`` and ``run``.

    ``epoch_duration``, ``data_wait`` (histograms) and ``epoch`` (gauge) are bound already; the rest take their
    remaining label as an argument. Creating the object creates every series the run will use at zero (the datasets
    named here), so ``rate()``/``increase()`` see the first epoch's change.

    Args:
        registry: where the series live (default :data:`TRAINER_REGISTRY`, what ``nessa train`` serves).
        method: the selection method (``full``, ``craig``, ...).
        run: the run's name (low cardinality: one per training configuration, stable across resumes).
        datasets: the training and test datasets, whose byte and sample series start at zero.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        method: str = "full",
        run: str = "",
        datasets: Iterable[str] = (),
    ) -> None:
        self._f = _families(TRAINER_REGISTRY if registry is None else registry)
        self.method, self.run = method, run
        self.epoch_duration = self._f.epoch_duration.labels(method=method, run=run)
        self.data_wait = self._f.data_wait.labels(method=method, run=run)
        self.epoch = self._f.epoch.labels(method=method, run=run)
        for dataset in datasets:
            for kind in ("samples", "metadata"):
                self.received_bytes(dataset, kind)
            self.trained_samples(dataset)

    def received_bytes(self, dataset: str, kind: str) -> Counter:
        """``nessa_trainer_received_bytes_total`` of ``dataset`` and ``kind`` (samples, metadata)."""
        return self._f.received_bytes.labels(method=self.method, run=self.run, dataset=dataset, kind=kind)

    def trained_samples(self, dataset: str) -> Counter:
        """``nessa_trainer_trained_samples_total`` of ``dataset``."""
        return self._f.trained_samples.labels(method=self.method, run=self.run, dataset=dataset)

    def energy(self, component: str, source: str) -> Counter:
        """``nessa_trainer_energy_joules_total`` of ``component`` (trainer, daemon), labelled measured or estimated."""
        return self._f.energy.labels(method=self.method, run=self.run, component=component, source=source)

    def loss(self, split: str) -> Gauge:
        """``nessa_trainer_loss`` of ``split`` (train, test)."""
        return self._f.loss.labels(method=self.method, run=self.run, split=split)

    def accuracy(self, split: str) -> Gauge:
        """``nessa_trainer_accuracy_ratio`` of ``split`` (train, test)."""
        return self._f.accuracy.labels(method=self.method, run=self.run, split=split)

    def subset_size(self, dataset: str) -> Gauge:
        """``nessa_trainer_subset_size_samples`` of ``dataset``."""
        return self._f.subset_size.labels(method=self.method, run=self.run, dataset=dataset)

    def set_run_info(self, dataset: str, fraction: float, model: str) -> None:
        """Set ``nessa_trainer_run_info`` (1) for this run."""
        self._f.run_info.labels(
            method=self.method, run=self.run, dataset=dataset, fraction=f"{fraction:g}", model=model
        ).set(1)


def initialize_storage_series(methods: Iterable[str], engines: Iterable[str]) -> None:
    """Create the daemon's per-method and per-engine series at zero before the first call.

    Prometheus's ``increase()``/``rate()`` need a series to exist before it changes: a series born at its final
    value (every selection of a short run landing between two scrapes) shows no increase. Touching the known label
    values at startup, as the Prometheus instrumentation guide advises, makes the first selection count.
    """
    for method in methods:
        SELECTION_DURATION.labels(method=method)
    for engine in engines:
        PROXY_FORWARD_DURATION.labels(engine=engine)
        PROXY_FORWARD_SAMPLES.labels(engine=engine)


def start_metrics_server(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics`` of ``registry`` over HTTP on ``host:port`` in a daemon thread.

    Args:
        port: TCP port; 0 picks a free one.
        registry: what to serve: :data:`STORAGE_REGISTRY` in the daemon, :data:`TRAINER_REGISTRY` in the trainer.
        host: address to bind.

    Returns:
        The HTTP server: ``.server_port`` is the port bound, ``.shutdown()`` stops it.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
