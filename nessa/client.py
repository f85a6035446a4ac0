"""The storage daemon's client: list datasets, push proxies, select, and stream the chosen samples.

:class:`StorageClient` wraps the ``nessa.v1.Storage`` gRPC API:

* every call carries a deadline (``timeout``; ``select_timeout`` for Select, ``stream_timeout`` per stream
  attempt) and, when a token is set, ``authorization: Bearer <token>``;
* calls are retried with exponential backoff on ``UNAVAILABLE`` only where that is safe: reads, Select (the same
  request gives the same selection), PushProxy (the same bytes) and streams, which resume from the cursor of the
  last batch fully received, so a daemon restart in the middle of a stream delivers each sample exactly once;
* the channel is opened lazily in the process that uses it (a client that crosses ``fork`` reopens its own; a
  pickled client carries only its settings), so data-loader workers each get their own;
* daemon errors come back as :mod:`nessa.errors` exceptions (``NOT_FOUND`` as :class:`~nessa.errors.NotFoundError`
  and so on) with the daemon's message, chained to the ``grpc.RpcError``; transport errors (``UNAVAILABLE``,
  ``DEADLINE_EXCEEDED``, ``UNAUTHENTICATED``, ``CANCELLED``) stay ``grpc.RpcError``.

The client counts the bytes it receives the way the daemon counts what it sends (:mod:`nessa.metrics`):
``bytes_received["samples"]`` is sample payload, ``bytes_received["metadata"]`` the rest of every
dataset-scoped reply, both as serialized protobuf sizes.

The torch dataset and sampler over a selection are in :mod:`nessa.data`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc
import numpy as np

from nessa.errors import (
    DataCorruptionError,
    FailedPreconditionError,
    InvalidArgumentError,
    NessaError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
)
from nessa.order import Partition
from nessa.packed import PackedSamples, decode_sample_batch
from nessa.records import Selection
from nessa.v1 import storage_pb2 as pb
from nessa.v1 import storage_pb2_grpc
from nessa.wire import CLIENT_METADATA, RETRY_METADATA

__all__ = [
    "TLS",
    "Batch",
    "DatasetInfo",
    "DistillJobInfo",
    "ProxyAck",
    "Selection",
    "StorageClient",
    "iter_samples",
]

MIB = 1 << 20
#: What ``tls`` may be: ``None``/``False`` plaintext, ``True`` system roots, a PEM path or bytes (the CA that
#: signed the daemon's certificate), or ready ``grpc.ChannelCredentials``.
TLS: TypeAlias = bool | str | Path | bytes | grpc.ChannelCredentials | None

_DOMAIN_ERRORS: dict[grpc.StatusCode, type[NessaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DATA_LOSS: DataCorruptionError,
}
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


def _retryable(exc: grpc.RpcError) -> bool:
    """UNAVAILABLE (the daemon is down or restarting), or RESOURCE_EXHAUSTED that the daemon marks as busy."""
    code = exc.code() if hasattr(exc, "code") else None
    if code in _RETRYABLE:
        return True
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED or not hasattr(exc, "trailing_metadata"):
        return False
    return any(key == RETRY_METADATA for key, _value in exc.trailing_metadata() or ())


_T = TypeVar("_T")


@dataclass(frozen=True)
class DatasetInfo:
    """What a daemon says about one dataset.

    Attributes:
        name: dataset name.
        num_samples: samples stored.
        num_classes: classes.
        class_names: class names.
        class_counts: samples per label.
        codec: ``raw``, ``png``, ``jpeg`` or ``bytes``.
        sample_shape: decoded sample shape (raw codec).
        dtype: decoded sample dtype (raw codec).
        total_bytes: stored sample bytes (one full epoch's payload).
        num_shards: LMDB shards.
        proxy_version: version of the proxy the daemon holds, or ``None``.
        source: the manifest's provenance (for a distilled group: its stages and learned lrs).
    """

    name: str
    num_samples: int
    num_classes: int
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    codec: str
    sample_shape: tuple[int, ...]
    dtype: str
    total_bytes: int
    num_shards: int
    proxy_version: int | None
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pb(cls, msg: pb.DatasetInfo) -> DatasetInfo:
        """Build from the protobuf message."""
        return cls(
            name=msg.name,
            num_samples=int(msg.num_samples),
            num_classes=int(msg.num_classes),
            class_names=tuple(msg.class_names),
            class_counts=tuple(int(c) for c in msg.class_counts),
            codec=msg.codec,
            sample_shape=tuple(int(d) for d in msg.sample_shape),
            dtype=msg.dtype,
            total_bytes=int(msg.total_bytes),
            num_shards=int(msg.num_shards),
            proxy_version=int(msg.proxy_version) if msg.HasField("proxy_version") else None,
            source=json.loads(msg.source_json) if msg.source_json else {},
        )


@dataclass(frozen=True)
class DistillJobInfo:
    """A distillation job on a daemon (see ``DistillJob`` in storage.proto).

    Attributes:
        id: job id.
        dataset: the source dataset.
        method: ``pdd``, ``mtt`` or ``dm``.
        state: ``running``, ``done``, ``failed`` or ``cancelled``.
        progress: fraction done.
        phase: what it is doing.
        error: why it failed or was cancelled.
        output: the group dataset's name.
        stages: the stage datasets, in order (once done).
        learned_lr: each stage's learned lr.
        seconds: wall time so far.
        real_bytes_read: real sample bytes read on the storage node.
        synthetic_bytes_written: sample bytes of the datasets written.
    """

    id: str
    dataset: str
    method: str
    state: str
    progress: float
    phase: str
    error: str
    output: str
    stages: tuple[str, ...]
    learned_lr: tuple[float, ...]
    seconds: float
    real_bytes_read: int
    synthetic_bytes_written: int

    @property
    def stage_text(self) -> str:
        """The phase, for progress lines."""
        return self.phase or self.state

    @classmethod
    def from_pb(cls, msg: pb.DistillJob) -> DistillJobInfo:
        """Build from the protobuf message."""
        return cls(
            id=msg.job_id, dataset=msg.dataset, method=msg.method, state=msg.state, progress=float(msg.progress),
            phase=msg.phase, error=msg.error, output=msg.output, stages=tuple(msg.stage_datasets),
            learned_lr=tuple(float(v) for v in msg.learned_lr), seconds=float(msg.seconds),
            real_bytes_read=int(msg.real_bytes_read), synthetic_bytes_written=int(msg.synthetic_bytes_written),
        )  # fmt: skip


@dataclass(frozen=True)
class ProxyAck:
    """The daemon's receipt for a pushed proxy.

    Attributes:
        dataset: dataset name.
        version: the proxy's version.
        size: bytes received.
        sha256: hex SHA-256 of the bytes.
        previous_version: the version held before, or ``None``.
    """

    dataset: str
    version: int
    size: int
    sha256: str
    previous_version: int | None


@dataclass
class Batch:
    """One batch of a stream (as sent: bounded in bytes; a large sample is one batch of its own).

    Attributes:
        indices: int64 dataset indices.
        labels: int64 labels.
        weights: float32 weights.
        samples: the samples' stored bytes, as views of the received message (:class:`~nessa.packed.PackedSamples`:
            a sequence of ``memoryview``; ``samples.as_array(dtype, shape)`` views equal-sized samples as one array).
        cursor: pass it to :meth:`StorageClient.stream` to resume right after this batch.
        position: samples of the stream delivered through this batch.
        total: samples in the stream.
        payload_bytes: sample bytes received for this batch.
        metadata_bytes: the rest of the batch's message(s) on the wire.
    """

    indices: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    samples: PackedSamples
    cursor: str
    position: int
    total: int
    payload_bytes: int = 0
    metadata_bytes: int = 0

    def __len__(self) -> int:
        return len(self.indices)


def _domain_error(exc: grpc.RpcError) -> Exception:
    """The :mod:`nessa.errors` exception for a daemon status, or ``exc`` itself for transport statuses."""
    code = exc.code() if hasattr(exc, "code") else None
    cls = _DOMAIN_ERRORS.get(code) if code is not None else None
    if cls is None:
        return exc
    err = cls(exc.details() if hasattr(exc, "details") else str(exc))
    err.__cause__ = exc
    return err


def _credentials(tls: TLS) -> grpc.ChannelCredentials | None:
    if tls is None or tls is False:
        return None
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, bytes):
        return grpc.ssl_channel_credentials(root_certificates=tls)
    path = Path(tls)
    if not path.is_file():
        raise InvalidArgumentError(f"TLS root certificate {str(path)!r} does not exist; pass the CA's PEM file")
    return grpc.ssl_channel_credentials(root_certificates=path.read_bytes())


class StorageClient:
    """A client of one storage daemon.

    Args:
        target: ``host:port`` of the daemon.
        token: bearer token (``None``: send none).
        tls: ``None`` for plaintext, ``True`` for TLS with the system's roots, a PEM path or bytes of the CA that
            signed the daemon's certificate, or ``grpc.ChannelCredentials`` (not picklable: use a path with
            spawned data-loader workers).
        timeout: deadline of quick calls, in seconds.
        select_timeout: deadline of Select.
        stream_timeout: deadline of each stream attempt.
        retry_timeout: how long to keep retrying an unavailable or busy daemon (UNAVAILABLE, or RESOURCE_EXHAUSTED
            the daemon marks as busy: all its slots or selections taken) before giving up.
        chunk_size: proxy upload chunk size.
        max_message_bytes: largest message accepted from the daemon.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: TLS = None,
        *,
        timeout: float = 30.0,
        select_timeout: float = 3600.0,
        stream_timeout: float = 6 * 3600.0,
        retry_timeout: float = 60.0,
        chunk_size: int = 1 * MIB,
        max_message_bytes: int = 4 * MIB,
    ) -> None:
        if not target:
            raise InvalidArgumentError("no daemon address: give 'host:port' (e.g. '127.0.0.1:50051')")
        if chunk_size < 1 or chunk_size > max_message_bytes - 64 * 1024:
            raise InvalidArgumentError(f"chunk_size must be in [1, {max_message_bytes - 64 * 1024}]; got {chunk_size}")
        self.target = target
        self.token = token
        self.tls = tls
        self.timeout = float(timeout)
        self.select_timeout = float(select_timeout)
        self.stream_timeout = float(stream_timeout)
        self.retry_timeout = float(retry_timeout)
        self.chunk_size = int(chunk_size)
        self.max_message_bytes = int(max_message_bytes)
        self.bytes_received: dict[str, int] = {"samples": 0, "metadata": 0}
        self.bytes_sent: dict[str, int] = {"proxy": 0}
        self.reconnects = 0
        self._client_id = uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._pid = -1
        self._channel: grpc.Channel | None = None
        self._stub: storage_pb2_grpc.StorageStub | None = None

    # -- channel -------------------------------------------------------------------------------------------------

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the token, and an id per client object and process.

        The daemon's per-client stream limit tells clients at one address apart by the id, so each DataLoader
        worker process is a client of its own.
        """
        meta: tuple[tuple[str, str], ...] = ((CLIENT_METADATA, f"{self._client_id}.{os.getpid()}"),)
        if self.token:
            meta += (("authorization", f"Bearer {self.token}"),)
        return meta

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _pid=-1, _channel=None, _stub=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.pop("_metadata", None)  # pickled by an older nessa
        self.__dict__.update(state)
        self.__dict__.setdefault("_client_id", uuid.uuid4().hex[:16])
        self._lock = threading.Lock()

    @property
    def channel(self) -> grpc.Channel:
        """This process's channel to the daemon (opened on first use, reopened after ``fork``)."""
        with self._lock:
            if self._channel is None or self._pid != os.getpid():
                options = [
                    ("grpc.max_receive_message_length", self.max_message_bytes),
                    ("grpc.max_send_message_length", self.max_message_bytes),
                    ("grpc.enable_retries", 0),
                    # Reconnect quickly after a daemon restart (gRPC's default backoff grows to two minutes);
                    # our own retry loop bounds the total wait with retry_timeout.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ]
                creds = _credentials(self.tls)
                if creds is None:
                    self._channel = grpc.insecure_channel(self.target, options=options)
                else:
                    self._channel = grpc.secure_channel(self.target, creds, options=options)
                self._stub = storage_pb2_grpc.StorageStub(self._channel)
                self._pid = os.getpid()
            return self._channel

    @property
    def stub(self) -> storage_pb2_grpc.StorageStub:
        """The ``nessa.v1.Storage`` stub on :attr:`channel`."""
        self.channel  # noqa: B018 - opens the channel in this process if needed
        if self._stub is None:
            raise FailedPreconditionError("the client's channel is closed")
        return self._stub

    def close(self) -> None:
        """Close this process's channel (a later call opens a new one)."""
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = None
            self._stub = None

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the channel is connected (raises ``grpc.FutureTimeoutError`` after ``timeout``)."""
        grpc.channel_ready_future(self.channel).result(timeout=self.timeout if timeout is None else timeout)

    # -- calls ---------------------------------------------------------------------------------------------------

    def _count(self, kind: str, n: int) -> None:
        with self._lock:
            self.bytes_received[kind] += int(n)

    def _retrying(self, call: Callable[[], _T]) -> _T:
        """Run ``call()``; on UNAVAILABLE retry with backoff for up to ``retry_timeout`` seconds.

        Attempts fail fast while the daemon is down (no ``wait_for_ready``), so the total wait stays bounded and the
        last error is ``UNAVAILABLE``, not a deadline.
        """
        start = time.monotonic()
        delay = 0.05
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                if not _retryable(exc) or time.monotonic() - start + delay > self.retry_timeout:
                    raise _domain_error(exc) from exc
            self.reconnects += 1
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset the daemon serves."""
        reply = self._retrying(
            lambda: self.stub.ListDatasets(pb.ListDatasetsRequest(), timeout=self.timeout, metadata=self._metadata)
        )
        return [DatasetInfo.from_pb(d) for d in reply.datasets]

    def describe(self, dataset: str) -> DatasetInfo:
        """One dataset (``NotFoundError`` if the daemon does not serve it)."""
        reply = self._retrying(
            lambda: self.stub.DescribeDataset(
                pb.DescribeDatasetRequest(dataset=dataset),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        )
        self._count("metadata", reply.ByteSize())
        return DatasetInfo.from_pb(reply)

    def _proxy_chunks(self, dataset: str, data: bytes, version: int | None) -> Iterator[pb.ProxyChunk]:
        digest = hashlib.sha256(data).hexdigest()
        n = len(data)
        offsets = range(0, max(n, 1), self.chunk_size)
        last = offsets[-1]
        for off in offsets:
            chunk = pb.ProxyChunk(data=data[off : off + self.chunk_size])
            if off == 0:
                chunk.dataset = dataset
                chunk.total_size = n
                if version is not None:
                    chunk.version = version
            if off == last:
                chunk.sha256 = digest
            yield chunk

    def push_proxy(self, proxy: Any, dataset: str, *, timeout: float | None = None) -> ProxyAck:
        """Upload a proxy for ``dataset`` in checksummed chunks; the daemon keeps it as its last good proxy.

        Args:
            proxy: a :class:`nessa.proxy.Proxy` or its serialized bytes (:func:`nessa.proxy.dumps`).
            dataset: the dataset it is for (its input shape and class count must fit).
            timeout: deadline (default: ``timeout``, plus a second per MiB).

        Raises:
            InvalidArgumentError: corrupt bytes, not a proxy, or a proxy that does not fit the dataset.
            NotFoundError: unknown dataset.
            ResourceExhaustedError: larger than the daemon accepts.
        """
        if isinstance(proxy, bytes | bytearray | memoryview):
            data, version = bytes(proxy), None
        else:
            from nessa.proxy import dumps  # the proxy package pulls in its engines; only needed here

            data, version = dumps(proxy), int(proxy.version)
        deadline = timeout if timeout is not None else self.timeout + len(data) / MIB
        reply = self._retrying(
            lambda: self.stub.PushProxy(
                self._proxy_chunks(dataset, data, version),
                timeout=deadline,
                metadata=self._metadata,
            )
        )
        self._count("metadata", reply.ByteSize())
        with self._lock:  # counted once accepted: an attempt retried after UNAVAILABLE is not counted twice
            self.bytes_sent["proxy"] += len(data)
        return ProxyAck(
            dataset=reply.dataset,
            version=int(reply.version),
            size=int(reply.size),
            sha256=reply.sha256,
            previous_version=int(reply.previous_version) if reply.HasField("previous_version") else None,
        )

    def select(
        self,
        dataset: str,
        method: str,
        fraction: float | None = None,
        seed: int = 0,
        *,
        count: int | None = None,
        budget_rule: str = "global",
        proxy_version: int | None = None,
        candidates: Sequence[int] | np.ndarray | None = None,
        engine: str = "",
        options: dict[str, Any] | None = None,
        timeout: float | None = None,
        session: str = "",
        **method_options: Any,
    ) -> Selection:
        """Ask the daemon for a weighted subset of ``dataset``.

        Args:
            dataset: dataset name.
            method: selector name (``random``, ``balanced``, ``craig``, ...).
            fraction: budget as a fraction of the candidates, in (0, 1].
            seed: the selector's seed.
            count: budget as a number of samples (instead of ``fraction``).
            budget_rule: ``global`` (default), or ``equal`` / ``proportional`` per-class budgets.
            proxy_version: require the daemon's proxy to have this version.
            candidates: select among these dataset indices only.
            engine: proxy engine (``opencl``, ``torch``, ``numpy``); "" for the daemon's default.
            options: method options (also accepted as keyword arguments).
            timeout: deadline (default ``select_timeout``).
            session: a selection session (e.g. a training run's id): the daemon keeps the selector's state between
                calls of the same session (``drop_learned``, AdaCore's averages); "" selects statelessly.
            **method_options: method options.

        Raises:
            InvalidArgumentError: bad method, option or budget.
            NotFoundError: unknown dataset.
            FailedPreconditionError: the method needs a proxy and none (or not that version) was pushed.
            ResourceExhaustedError: the daemon runs too many selections.
        """
        if (fraction is None) == (count is None):
            raise InvalidArgumentError("give exactly one budget: fraction=... in (0, 1] or count=... samples")
        opts = {**(options or {}), **method_options}
        request = pb.SelectRequest(
            dataset=dataset,
            method=method,
            budget_rule=budget_rule,
            seed=int(seed),
            options={k: json.dumps(v) for k, v in opts.items()},
            engine=engine,
            session=session,
        )
        if fraction is not None:
            request.fraction = float(fraction)
        else:
            request.count = int(count or 0)
        if proxy_version is not None:
            request.proxy_version = int(proxy_version)
        if candidates is not None:
            request.candidates.extend(np.asarray(candidates, dtype=np.int64).tolist())
        reply = self._retrying(
            lambda: self.stub.Select(
                request,
                timeout=self.select_timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        )
        return self._selection(reply)

    def distill(
        self,
        dataset: str,
        *,
        method: str = "pdd",
        ipc: int = 10,
        stages: int = 0,
        seed: int = 0,
        output: str = "",
        options: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> DistillJobInfo:
        """Start a distillation job on the daemon (returns at once; see :meth:`wait_distill`).

        Args:
            dataset: the daemon's dataset to distil.
            method: ``pdd``, ``mtt`` or ``dm``.
            ipc: synthetic samples per class in total.
            stages: PDD stages (0: 5 for pdd, 1 otherwise).
            seed: the job's seed.
            output: the group dataset's name (default ``DATASET-METHOD``).
            options: distillation options (see ``docs/distillation.md``).
            overwrite: replace an existing group of that name.
        """
        request = pb.DistillRequest(
            dataset=dataset, method=method, ipc=int(ipc), stages=int(stages), seed=int(seed), output=output,
            options={k: json.dumps(v) for k, v in (options or {}).items()}, overwrite=overwrite,
        )  # fmt: skip
        reply = self._retrying(lambda: self.stub.Distill(request, timeout=self.timeout, metadata=self._metadata))
        return DistillJobInfo.from_pb(reply)

    def distill_job(self, job_id: str) -> DistillJobInfo:
        """A distillation job's state and progress."""
        request = pb.DistillJobRequest(job_id=job_id)
        reply = self._retrying(lambda: self.stub.GetDistillJob(request, timeout=self.timeout, metadata=self._metadata))
        return DistillJobInfo.from_pb(reply)

    def cancel_distill(self, job_id: str) -> DistillJobInfo:
        """Ask a running distillation job to stop (it ends ``cancelled``; nothing is published)."""
        request = pb.DistillJobRequest(job_id=job_id)
        reply = self._retrying(
            lambda: self.stub.CancelDistillJob(request, timeout=self.timeout, metadata=self._metadata)
        )
        return DistillJobInfo.from_pb(reply)

    def wait_distill(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[DistillJobInfo], None] | None = None,
    ) -> DistillJobInfo:
        """Poll a distillation job until it is no longer running.

        After ``timeout`` seconds the job is returned still running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.distill_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.state != "running" or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(poll)

    def _selection(self, reply: pb.Selection) -> Selection:
        """The record of a reply, fetching indices and weights when the reply was too large to hold them."""
        meta_bytes = reply.ByteSize()
        self._count("metadata", meta_bytes)
        if reply.inline:
            return Selection.from_pb(reply, metadata_bytes=meta_bytes)
        parts_i, parts_w = [], []
        for batch in self.stream(reply.id, batch_size=65536, metadata_only=True):
            parts_i.append(batch.indices)
            parts_w.append(batch.weights)
            meta_bytes += batch.metadata_bytes
        indices = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
        weights = np.concatenate(parts_w) if parts_w else np.zeros(0, np.float32)
        return Selection.from_pb(reply, indices, weights, metadata_bytes=meta_bytes)

    def get_selection(self, selection_id: str) -> Selection:
        """A selection the daemon made earlier (``NotFoundError`` if it no longer keeps it)."""
        reply = self._retrying(
            lambda: self.stub.GetSelection(
                pb.GetSelectionRequest(id=selection_id), timeout=self.timeout, metadata=self._metadata
            )
        )
        return self._selection(reply)

    def selections(self, dataset: str = "") -> list[Selection]:
        """The selections the daemon keeps (of ``dataset``, or all), newest first, without indices and weights."""
        reply = self._retrying(
            lambda: self.stub.ListSelections(
                pb.ListSelectionsRequest(dataset=dataset), timeout=self.timeout, metadata=self._metadata
            )
        )
        return [Selection.from_pb(msg) for msg in reply.selections]

    def sessions(self) -> list[dict[str, Any]]:
        """The selection sessions whose selector state the daemon keeps, most recently used first."""
        reply = self._retrying(
            lambda: self.stub.ListSessions(pb.ListSessionsRequest(), timeout=self.timeout, metadata=self._metadata)
        )
        return [
            {
                "session": m.session,
                "dataset": m.dataset,
                "method": m.method,
                "rounds": int(m.rounds),
                "parts": int(m.parts),
                "state_bytes": int(m.state_bytes),
                "updated_unix": float(m.updated_unix),
            }
            for m in reply.sessions
        ]

    def stream(
        self,
        selection_or_indices: Selection | str | Sequence[int] | np.ndarray,
        dataset: str | None = None,
        batch_size: int = 256,
        shuffle_seed: int | None = None,
        cursor: str | None = None,
        *,
        partition: Partition | None = None,
        max_batch_bytes: int = 0,
        metadata_only: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Batch]:
        """Stream the samples of a selection (or of explicit indices) in batches.

        Batches hold at most ``batch_size`` samples and ``max_batch_bytes`` of payload (the daemon's default, 1 MiB,
        when 0); a larger sample arrives as one batch of its own, joined here from the pieces the daemon sends. If
        the daemon becomes unavailable mid-stream (a restart), the stream reconnects with backoff and resumes after
        the last batch yielded, so each sample is yielded exactly once.

        Args:
            selection_or_indices: a :class:`Selection`, a selection id, or dataset indices.
            dataset: the dataset (required with indices; checked with a selection).
            batch_size: most samples per batch.
            shuffle_seed: stream in the order of this seeded permutation (``None``: the selection's order).
            cursor: resume after the batch that carried this cursor.
            partition: stream only this rank/worker part (see :mod:`nessa.order`).
            max_batch_bytes: most payload bytes per batch (0: the daemon's default).
            metadata_only: indices, labels and weights only.
            timeout: deadline of each attempt (default ``stream_timeout``).

        Yields:
            :class:`Batch` objects, in stream order.

        Raises:
            NotFoundError: unknown dataset or selection id.
            InvalidArgumentError: a cursor of another stream, a bad partition.
            OutOfRangeError: an index past the end of the dataset, or a cursor past the end of the stream.
        """
        request = pb.StreamRequest(
            batch_size=int(batch_size), max_batch_bytes=int(max_batch_bytes), metadata_only=metadata_only
        )
        if isinstance(selection_or_indices, Selection):
            request.selection_id = selection_or_indices.id
            request.dataset = dataset or selection_or_indices.dataset
        elif isinstance(selection_or_indices, str):
            request.selection_id = selection_or_indices
            request.dataset = dataset or ""
        else:
            if not dataset:
                raise InvalidArgumentError("streaming explicit indices needs the dataset name: pass dataset=...")
            request.dataset = dataset
            request.indices.indices.extend(np.asarray(selection_or_indices, dtype=np.int64).tolist())
        if shuffle_seed is not None:
            request.shuffle_seed = int(shuffle_seed)
        if partition is not None:
            request.partition.CopyFrom(
                pb.Partition(
                    world_size=partition.world_size,
                    rank=partition.rank,
                    num_workers=partition.num_workers,
                    worker=partition.worker,
                    block_size=partition.block_size,
                    skip=partition.skip,
                    worker_skip=partition.worker_skip,
                    remainder=f"REMAINDER_{partition.remainder.upper()}",
                )
            )
        return self._stream(request, cursor or "", self.stream_timeout if timeout is None else timeout)

    def _stream_samples(self) -> grpc.UnaryStreamMultiCallable:
        """``StreamSamples`` yielding :class:`~nessa.packed.DecodedBatch` (views of each received message)."""
        return self.channel.unary_stream(
            "/nessa.v1.Storage/StreamSamples",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=decode_sample_batch,
        )

    def _stream(self, request: pb.StreamRequest, cursor: str, timeout: float) -> Iterator[Batch]:
        delay = 0.05
        failed_at: float | None = None
        while True:
            request.cursor = cursor
            call = self._stream_samples()(request, timeout=timeout, metadata=self._metadata)
            pieces: list[memoryview] = []
            piece_meta = 0
            try:
                for msg in call:
                    samples = msg.samples
                    payload = samples.nbytes
                    meta = msg.wire_bytes - payload
                    self._count("samples", payload)
                    self._count("metadata", meta)
                    failed_at, delay = None, 0.05  # progress: a later failure gets a fresh retry budget
                    if msg.sample_size:  # one piece of a sample larger than a message
                        if msg.piece_offset != sum(len(p) for p in pieces):
                            raise DataCorruptionError(
                                f"sample {msg.indices.tolist()} piece at offset {msg.piece_offset} arrived out of "
                                "order; this is a daemon bug — report it"
                            )
                        pieces.append(samples[0])
                        piece_meta += meta
                        if msg.piece_offset + payload < msg.sample_size:
                            continue
                        whole = PackedSamples(b"".join(pieces), np.array([0, msg.sample_size], dtype=np.int64))
                        samples, payload, meta = whole, int(msg.sample_size), piece_meta
                        pieces, piece_meta = [], 0
                    cursor = msg.cursor
                    yield Batch(
                        indices=msg.indices.copy(),
                        labels=msg.labels.copy(),
                        weights=msg.weights.copy(),
                        samples=samples,
                        cursor=msg.cursor,
                        position=msg.position,
                        total=msg.total,
                        payload_bytes=payload,
                        metadata_bytes=meta,
                    )
                return
            except grpc.RpcError as exc:
                now = time.monotonic()
                failed_at = failed_at if failed_at is not None else now
                if not _retryable(exc) or now - failed_at + delay > self.retry_timeout:
                    raise _domain_error(exc) from exc
            finally:
                call.cancel()  # no-op when finished; stops the daemon's work when the consumer stops early
            self.reconnects += 1
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def iter_samples(batches: Iterable[Batch]) -> Iterator[tuple[int, int, float, bytes]]:
    """Flatten batches into ``(index, label, weight, data)`` tuples."""
    for b in batches:
        yield from zip(b.indices.tolist(), b.labels.tolist(), b.weights.tolist(), b.samples.tobytes_list(), strict=True)
