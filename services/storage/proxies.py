"""Proxy uploads: assemble chunks, check size and checksum, validate against the dataset, keep the last good one.

A push is accepted only whole: every chunk arrived, the SHA-256 of the assembled bytes matches the one the client
sent, the bytes parse as a proxy (:func:`nessa.proxy.loads` checks the proxy's own checksum and structure), the proxy
fits the dataset (input shape, class count, sample dtype), every size in its graph is bounded
(:func:`nessa.proxy.format.check_bounds`), the memory and multiply-adds of a forward pass over one batch are under the
daemon's caps (``RESOURCE_EXHAUSTED`` with the figure and the limit otherwise), and a *dry run* of the proxy on a few
of the dataset's samples, with the engine selections use, gives finite outputs. Only then does it replace the proxy
held before; anything else is rejected with a message saying what to fix, and the last good proxy stays in place.
Accepted proxies are also written to the state directory, so a restarted daemon keeps serving selections with them
(restored proxies get the same checks but the dry run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nessa.errors import DataCorruptionError, InvalidArgumentError, NessaError, ResourceExhaustedError
from nessa.metrics import BYTES_RECEIVED, PROXY_VERSION
from nessa.proxy import Proxy, loads
from nessa.proxy.format import Limits, check_bounds, check_input_dtype, estimate_forward
from nessa.services.storage.cancel import CancelToken
from nessa.services.storage.catalog import Catalog, DatasetEntry
from nessa.store.images import IMAGE_CODECS, decode_images

__all__ = ["DRY_RUN_SAMPLES", "ProxyChunkData", "ProxyLimits", "ProxyRecord", "ProxyStore", "check_proxy_fits"]

log = logging.getLogger("nessa.storage")

#: Samples of the dataset a new proxy is run on before it is accepted.
DRY_RUN_SAMPLES = 8
_GIB = 1 << 30


@dataclass(frozen=True)
class ProxyLimits:
    """What a pushed proxy may cost the daemon.

    Attributes:
        batch_size: samples per forward batch the daemon runs (its ``proxy_batch_size``); the cost is per batch.
        max_forward_bytes: most memory (activations live at once plus float32 weights) of one batch's forward.
        max_forward_macs: most multiply-adds of one batch's forward.
        graph: bounds on every dimension, stride and padding, and on node and tensor counts.
    """

    batch_size: int = 1024
    max_forward_bytes: int = 1 << 30
    max_forward_macs: int = 10**12
    graph: Limits = field(default_factory=Limits)


def _figure(nbytes: int) -> str:
    return f"{nbytes / _GIB:.2f} GiB" if nbytes >= _GIB else f"{nbytes / (1 << 20):.1f} MiB"


@dataclass(frozen=True)
class ProxyChunkData:
    """One received chunk, as plain values (the servicer converts the protobuf message).

    Attributes:
        dataset: dataset name ("" on chunks after the first).
        version: declared version, or ``None``.
        data: the chunk's bytes.
        total_size: declared size of the whole proxy (0: not declared).
        sha256: hex SHA-256 of the whole proxy ("" except on the last chunk).
    """

    dataset: str
    version: int | None
    data: bytes
    total_size: int
    sha256: str


@dataclass(frozen=True)
class ProxyRecord:
    """The proxy a daemon holds for one dataset.

    Attributes:
        dataset: the dataset's name.
        version: the proxy's version.
        sha256: hex SHA-256 of its serialized bytes.
        size: serialized size in bytes.
        proxy: the parsed proxy.
    """

    dataset: str
    version: int
    sha256: str
    size: int
    proxy: Proxy


def check_proxy_fits(proxy: Proxy, entry: DatasetEntry, limits: ProxyLimits | None = None) -> None:
    """Check a parsed proxy against a dataset and the daemon's limits (everything but the dry run).

    Raises:
        InvalidArgumentError: the input shape, class count or sample dtype does not fit the dataset, or a size in
            the graph is over the bounds.
        ResourceExhaustedError: one batch's forward would need more memory or compute than the daemon allows (the
            message gives the figure and the limit).
    """
    lim = limits or ProxyLimits()
    if proxy.head_only:
        proxy.validate_for(num_classes=entry.num_classes)
        idx, _ = proxy.features()
        if idx.max() >= len(entry):
            raise InvalidArgumentError(
                f"the head-only proxy has features for index {int(idx.max())} but dataset {entry.name!r} has "
                f"{len(entry)} samples"
            )
    elif entry.codec in IMAGE_CODECS:
        # Encoded images: their decoded (H, W, C) is known only from the proxy's crop (else: at the dry run).
        prep = proxy.image_prep
        shape = prep.shape if prep is not None else None
        proxy.validate_for(input_shape=shape, num_classes=entry.num_classes)
        check_input_dtype(proxy, entry.codec, f"dataset {entry.name!r}")
    else:
        proxy.validate_for(input_shape=entry.sample_shape, num_classes=entry.num_classes)
        check_input_dtype(proxy, entry.dtype, f"dataset {entry.name!r}")
    check_bounds(proxy, lim.graph)
    cost = estimate_forward(proxy, max(1, min(lim.batch_size, len(entry))))
    if cost.memory_bytes > lim.max_forward_bytes:
        raise ResourceExhaustedError(
            f"a forward pass of this proxy over one batch of {cost.batch_size} samples would need about "
            f"{_figure(cost.memory_bytes)} of memory ({_figure(cost.activation_bytes)} of activations, "
            f"{_figure(cost.weight_bytes)} of weights), over this daemon's limit of {_figure(lim.max_forward_bytes)}; "
            "export a smaller proxy (fewer channels, smaller padding), or start the daemon with a larger "
            "max_forward_bytes or a smaller proxy_batch_size"
        )
    if cost.macs > lim.max_forward_macs:
        raise ResourceExhaustedError(
            f"a forward pass of this proxy over one batch of {cost.batch_size} samples would take about "
            f"{cost.macs:.3g} multiply-adds, over this daemon's limit of {lim.max_forward_macs:.3g}; export a smaller "
            "proxy, or start the daemon with a larger max_forward_macs"
        )


def read_inputs(entry: DatasetEntry, proxy: Proxy, indices: np.ndarray) -> np.ndarray:
    """The proxy's raw input samples at ``indices``: stored arrays, or PNG/JPEG decoded with the proxy's prep."""
    if proxy.head_only:
        # The trainer sent the per-sample features: no sample is read.
        have, feats = proxy.features()
        pos = {int(v): i for i, v in enumerate(have)}
        missing = [int(i) for i in np.asarray(indices) if int(i) not in pos]
        if missing:
            raise InvalidArgumentError(
                f"the head-only proxy carries no features for {len(missing)} candidate(s) (e.g. index {missing[0]}); "
                "send features for every candidate"
            )
        return feats[[pos[int(i)] for i in np.asarray(indices)]]
    if entry.codec in IMAGE_CODECS:
        return decode_images(entry.reader.read(indices), proxy.image_prep)
    return entry.reader.read_arrays(indices)


def dry_run(proxy: Proxy, entry: DatasetEntry, engine: Any, samples: int = DRY_RUN_SAMPLES) -> None:
    """Run ``proxy`` with ``engine`` on a few samples spread over the dataset; raise unless it works.

    Raises:
        InvalidArgumentError: the engine fails on the proxy, or its outputs are not finite.
        DataCorruptionError: a sample read for the dry run is corrupt (the dataset's fault, not the proxy's).
    """
    n = len(entry)
    idx = np.unique(np.linspace(0, n - 1, num=min(samples, n)).astype(np.int64))
    if proxy.head_only:  # the samples it carries features for
        have = np.sort(proxy.features()[0])
        idx = np.unique(have[np.linspace(0, len(have) - 1, num=min(samples, len(have))).astype(np.int64)])
    try:
        x = read_inputs(entry, proxy, idx)
        out = engine.run(proxy, x, entry.labels[idx])
        logits = np.asarray(out.logits)
    except DataCorruptionError:
        raise
    except Exception as exc:
        if not isinstance(exc, NessaError):
            log.warning("dataset %s: a pushed proxy failed its dry run", entry.name, exc_info=exc)
        raise InvalidArgumentError(
            f"the proxy failed a dry run on {len(idx)} samples of dataset {entry.name!r} "
            f"({type(exc).__name__}: {str(exc)[:300]}); it was not accepted and the proxy held before stays: fix the "
            "proxy (export it from a model built for this dataset)"
        ) from exc
    if logits.shape != (len(idx), entry.num_classes) or not np.all(np.isfinite(logits)):
        raise InvalidArgumentError(
            f"the proxy's dry run on {len(idx)} samples of dataset {entry.name!r} gave logits of shape "
            f"{logits.shape} with {int(np.sum(~np.isfinite(logits)))} non-finite values; it was not accepted and the "
            "proxy held before stays: check the model's weights and input normalization"
        )


class ProxyStore:
    """The last good proxy of every dataset, in memory and under ``<state_dir>/proxies``.

    Args:
        catalog: the datasets served (a push names one).
        state_dir: the daemon's state directory.
        max_bytes: the largest proxy accepted.
        limits: what one proxy may cost (bounds, memory and compute per batch).
        engine: ``engine(name="") -> ProxyEngine`` for the dry run (the default engine selections use; "torch" for a
            torch.export program proxy); ``None``: no dry run.
    """

    def __init__(
        self,
        catalog: Catalog,
        state_dir: Path,
        max_bytes: int,
        limits: ProxyLimits | None = None,
        engine: Any = None,
    ) -> None:
        self.catalog = catalog
        self.dir = Path(state_dir) / "proxies"
        self.max_bytes = int(max_bytes)
        self.limits = limits or ProxyLimits()
        self._engine = engine
        self._records: dict[str, ProxyRecord] = {}
        self._lock = threading.Lock()

    def get(self, dataset: str) -> ProxyRecord | None:
        """The proxy held for ``dataset``, or ``None`` if none was pushed."""
        return self._records.get(dataset)

    def receive(
        self, chunks: Iterable[ProxyChunkData], cancel: CancelToken | None = None
    ) -> tuple[ProxyRecord, int | None]:
        """Assemble, check and keep one uploaded proxy.

        Args:
            chunks: the upload, in order.
            cancel: stops reading if the call ends early.

        Returns:
            The new record and the version held before (``None`` if none).

        Raises:
            InvalidArgumentError: no chunks or no dataset, inconsistent chunks, size or checksum mismatch, bytes that
                are not a proxy, or a proxy that does not fit the dataset.
            NotFoundError: the dataset is not served.
            ResourceExhaustedError: the proxy is larger than the daemon accepts.
        """
        entry: DatasetEntry | None = None
        version: int | None = None
        declared = 0
        digest = ""
        buf = bytearray()
        sha = hashlib.sha256()
        received = None
        for i, chunk in enumerate(chunks):
            if cancel is not None:
                cancel.check()
            if i == 0:
                entry = self.catalog.get(chunk.dataset)
                received = BYTES_RECEIVED.labels(dataset=entry.name, kind="proxy")
                declared = int(chunk.total_size)
                if declared > self.max_bytes:
                    raise ResourceExhaustedError(
                        f"proxy of {declared} bytes is over this daemon's limit of {self.max_bytes} bytes; "
                        "export a smaller proxy (int8 weights) or start the daemon with a larger --max-proxy-bytes"
                    )
            elif chunk.dataset and entry is not None and chunk.dataset != entry.name:
                raise InvalidArgumentError(
                    f"proxy chunk {i} names dataset {chunk.dataset!r} but the upload is for {entry.name!r}; "
                    "send one proxy per PushProxy call"
                )
            if chunk.version is not None:
                if version is not None and chunk.version != version:
                    raise InvalidArgumentError(
                        f"proxy chunk {i} has version {chunk.version} but earlier chunks said {version}; "
                        "send one version per upload"
                    )
                version = chunk.version
            if received is not None:
                received.inc(len(chunk.data))
            if len(buf) + len(chunk.data) > self.max_bytes:
                raise ResourceExhaustedError(
                    f"proxy upload passed this daemon's limit of {self.max_bytes} bytes; export a smaller proxy "
                    "or start the daemon with a larger --max-proxy-bytes"
                )
            buf += chunk.data
            sha.update(chunk.data)
            if chunk.sha256:
                digest = chunk.sha256.strip().lower()
        if entry is None:
            raise InvalidArgumentError("empty proxy upload: send at least one ProxyChunk naming the dataset")
        if declared and len(buf) != declared:
            raise InvalidArgumentError(
                f"proxy upload ended after {len(buf)} of the {declared} bytes declared; the upload was cut short "
                "or total_size is wrong — push it again"
            )
        if not digest:
            raise InvalidArgumentError("proxy upload carries no sha256: set ProxyChunk.sha256 on the last chunk")
        actual = sha.hexdigest()
        if actual != digest:
            raise InvalidArgumentError(
                f"proxy checksum mismatch: the {len(buf)} bytes received hash to {actual} but the upload says "
                f"{digest}; the upload was corrupted or the checksum is of other bytes — push it again"
            )
        data = bytes(buf)
        proxy = loads(data)
        check_proxy_fits(proxy, entry, self.limits)
        proxy_version = int(proxy.version)
        if version is not None and version != proxy_version:
            raise InvalidArgumentError(
                f"the upload declares version {version} but the proxy inside has version {proxy_version}; "
                "export the proxy with the version you push"
            )
        if self._engine is not None:
            # A torch.export program runs only on the torch engine (a daemon without torch rejects it here).
            dry_run(proxy, entry, self._engine("torch") if proxy.program else self._engine())
        record = ProxyRecord(dataset=entry.name, version=proxy_version, sha256=actual, size=len(data), proxy=proxy)
        with self._lock:
            previous = self._records.get(entry.name)
            self._save(record, data)
            self._records[entry.name] = record
        PROXY_VERSION.labels(dataset=entry.name).set(proxy_version)
        log.info("dataset %s: proxy version %d accepted (%d bytes)", entry.name, proxy_version, len(data))
        return record, (previous.version if previous is not None else None)

    def _save(self, record: ProxyRecord, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Names may contain dots ("cifar.v2"): append suffixes, never replace one (Path.with_suffix would).
        path = self._path(record.dataset)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        meta = {"dataset": record.dataset, "version": record.version, "sha256": record.sha256, "size": record.size}
        meta_path = self.dir / f"{record.dataset}.json"
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)

    def _path(self, dataset: str) -> Path:
        """Where the proxy of ``dataset`` is saved (the name is a checked dataset name, one path component)."""
        return self.dir / f"{dataset}.proxy"

    def restore(self) -> list[str]:
        """Load the proxies saved by an earlier run for datasets still served; return their dataset names."""
        restored = []
        for entry in self.catalog.entries():
            PROXY_VERSION.labels(dataset=entry.name).set(-1)
            path = self._path(entry.name)
            if not path.is_file():
                continue
            try:
                data = path.read_bytes()
                proxy = loads(data)
                check_proxy_fits(proxy, entry, self.limits)
            except (OSError, NessaError) as exc:
                log.warning("dataset %s: not restoring the saved proxy (%s); push a new one", entry.name, exc)
                continue
            record = ProxyRecord(
                dataset=entry.name,
                version=int(proxy.version),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                proxy=proxy,
            )
            self._records[entry.name] = record
            PROXY_VERSION.labels(dataset=entry.name).set(record.version)
            restored.append(entry.name)
        return restored

    def describe(self) -> dict[str, Any]:
        """Dataset → version of the proxy held (for logs)."""
        return {name: rec.version for name, rec in self._records.items()}
