"""Every Prometheus metric NeSSA exports, defined once.

Names follow Prometheus conventions: the ``nessa_`` prefix, base units (``_bytes``, ``_seconds``), ``_total`` on
counters. Labels stay low-cardinality: dataset names, methods, engines, kinds, RPC names and status codes — never
sample ids, epochs or selection ids.

Bytes are counted as serialized protobuf bytes (``msg.ByteSize()``; gRPC framing and HTTP/2 headers excluded), as
the daemon hands each message to gRPC: for every call a client reads to its end this equals what the client
received; a stream the client cancels may also count messages already in flight that the client never read.

* ``kind="samples"``: the sample payload, the sum of ``len(b)`` over every ``SampleBatch.samples`` entry sent;
* ``kind="metadata"``: the rest of every dataset-scoped reply (``SampleBatch`` minus its payload, ``Selection``,
  ``DatasetInfo``, ``ProxyAck``);
* ``kind="proxy"`` (received): the ``data`` bytes of every ``ProxyChunk`` received.

The storage daemon's metrics and the trainer's live in the same registry (the default one), so a process that
runs both (``nessa demo``) exposes them together; :func:`start_metrics_server` serves it on its own port.
"""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "ACTIVE_SELECTIONS",
    "ACTIVE_STREAMS",
    "BYTES_FULL_EPOCH",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DATASET_SIZE",
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
    "TRAINER_ACCURACY",
    "TRAINER_BYTES_RECEIVED",
    "TRAINER_DATA_WAIT",
    "TRAINER_EPOCH",
    "TRAINER_EPOCH_DURATION",
    "TRAINER_LOSS",
    "TRAINER_SAMPLES",
    "TRAINER_SUBSET_SIZE",
    "initialize_storage_series",
    "start_metrics_server",
]

# Duration buckets from 1 ms to ~17 min: proxy batches are milliseconds, selections of large sets minutes.
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1000.0)  # fmt: skip
# Data-wait buckets: a trainer waiting more than a second per batch is badly starved.
_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- storage daemon -------------------------------------------------------------------------------------------

BYTES_SENT = Counter(
    "nessa_bytes_sent_total",
    "Bytes the storage daemon sent to trainers: kind=samples is sample payload, kind=metadata the rest of each "
    "dataset-scoped reply (serialized protobuf bytes).",
    ["dataset", "kind"],
)
BYTES_RECEIVED = Counter(
    "nessa_bytes_received_total",
    "Bytes the storage daemon received from trainers (kind=proxy: proxy chunk data).",
    ["dataset", "kind"],
)
BYTES_FULL_EPOCH = Counter(
    "nessa_bytes_full_epoch_total",
    "Sample bytes a full pass over the candidates would have streamed, added once per Select: the full-data line "
    "to compare nessa_bytes_sent_total with.",
    ["dataset"],
)
DATASET_SIZE = Gauge(
    "nessa_dataset_size_bytes",
    "Stored sample bytes of each dataset the daemon serves.",
    ["dataset"],
)
SAMPLES_STREAMED = Counter(
    "nessa_samples_streamed_total",
    "Samples whose bytes the daemon streamed (a sample split into pieces counts once).",
    ["dataset"],
)
SELECTIONS = Counter(
    "nessa_selections_total",
    "Select calls answered, by method; cached=true when an identical earlier selection was returned.",
    ["dataset", "method", "cached"],
)
SELECTION_DURATION = Histogram(
    "nessa_selection_duration_seconds",
    "Wall time of a Select (reading, proxy forward and selector) by method.",
    ["method"],
    buckets=_SECONDS_BUCKETS,
)
PROXY_FORWARD_DURATION = Histogram(
    "nessa_proxy_forward_duration_seconds",
    "Wall time of the proxy forward pass over the candidates of one Select, by engine.",
    ["engine"],
    buckets=_SECONDS_BUCKETS,
)
PROXY_FORWARD_SAMPLES = Counter(
    "nessa_proxy_forward_samples_total",
    "Samples the proxy ran over, by engine (a selector that reads only some candidates, like CREST's pools, "
    "has only those forwarded).",
    ["engine"],
)
SELECTION_SIZE = Gauge(
    "nessa_selection_size_samples",
    "Samples in the latest selection of a dataset by a method.",
    ["dataset", "method"],
)
SELECTION_OBJECTIVE = Gauge(
    "nessa_selection_objective",
    "Objective value of the latest selection of a dataset by a method (NaN when the method has none).",
    ["dataset", "method"],
)
PROXY_VERSION = Gauge(
    "nessa_proxy_version",
    "Version of the proxy the daemon holds for a dataset (-1: none).",
    ["dataset"],
)
ACTIVE_STREAMS = Gauge("nessa_active_streams", "StreamSamples calls in progress.")
ACTIVE_SELECTIONS = Gauge("nessa_active_selections", "Select calls in progress.")
SELECTION_CACHE_BYTES = Gauge(
    "nessa_selection_cache_bytes",
    "Memory held by the daemon's cache of recent selections (indices and weights).",
)
RPC_ERRORS = Counter(
    "nessa_rpc_errors_total",
    "RPCs that ended with an error status, by RPC and status code.",
    ["rpc", "code"],
)
RPC_CANCELLED = Counter(
    "nessa_rpc_cancelled_total",
    "RPCs whose work the daemon stopped because the client cancelled or its deadline passed.",
    ["rpc"],
)
CORRUPT_SAMPLES = Counter(
    "nessa_corrupt_samples_total",
    "Stored samples that failed their checksum when read (never sent), by dataset.",
    ["dataset"],
)
STALLED_STREAMS = Counter(
    "nessa_stalled_streams_total",
    "Streaming RPCs the daemon cancelled because the client stopped reading (or sending) past the idle timeout.",
    ["rpc"],
)

# --- trainer ---------------------------------------------------------------------------------------------------

TRAINER_EPOCH_DURATION = Histogram(
    "nessa_trainer_epoch_duration_seconds",
    "Wall time of one training epoch (selection wait, streaming and SGD).",
    buckets=_SECONDS_BUCKETS,
)
TRAINER_DATA_WAIT = Histogram(
    "nessa_trainer_data_wait_seconds",
    "Time the training loop waited for its next batch.",
    buckets=_WAIT_BUCKETS,
)
TRAINER_BYTES_RECEIVED = Counter(
    "nessa_trainer_bytes_received_total",
    "Bytes the trainer received from storage daemons, by kind (samples, metadata), counted as the daemon counts.",
    ["dataset", "kind"],
)
TRAINER_SAMPLES = Counter(
    "nessa_trainer_samples_total",
    "Samples the trainer trained on.",
    ["dataset"],
)
TRAINER_LOSS = Gauge(
    "nessa_trainer_loss",
    "Mean loss of the latest epoch, by split (train, test).",
    ["split"],
)
TRAINER_ACCURACY = Gauge(
    "nessa_trainer_accuracy_ratio",
    "Accuracy (0-1) of the latest epoch, by split (train, test).",
    ["split"],
)
TRAINER_EPOCH = Gauge("nessa_trainer_epoch", "The epoch the trainer is in (0-based).")
TRAINER_SUBSET_SIZE = Gauge(
    "nessa_trainer_subset_size_samples",
    "Samples the trainer trained on in its latest epoch (the subset's size; the dataset's for full data).",
    ["dataset"],
)


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


def start_metrics_server(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics`` (the default registry) over HTTP on ``host:port`` in a daemon thread.

    Args:
        port: TCP port; 0 picks a free one.
        host: address to bind.

    Returns:
        The HTTP server: ``.server_port`` is the port bound, ``.shutdown()`` stops it.
    """
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
