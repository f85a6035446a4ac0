"""Proxy uploads: assemble chunks, check size and checksum, validate against the dataset, keep the last good one.

A push is accepted only whole: every chunk arrived, the SHA-256 of the assembled bytes matches the one the client
sent, the bytes parse as a proxy (:func:`nessa.proxy.loads` checks the proxy's own checksum and structure), and the
proxy fits the dataset (input shape, class count). Anything else is rejected with a message saying what to fix, and
the proxy held before stays in place. Accepted proxies are also written to the state directory, so a restarted
daemon keeps serving selections with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nessa.errors import InvalidArgumentError, NessaError, ResourceExhaustedError
from nessa.metrics import BYTES_RECEIVED, PROXY_VERSION
from nessa.proxy import Proxy, loads
from nessa.services.storage.cancel import CancelToken
from nessa.services.storage.catalog import Catalog, DatasetEntry

__all__ = ["ProxyChunkData", "ProxyRecord", "ProxyStore", "check_proxy_fits"]

log = logging.getLogger("nessa.storage")


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


def check_proxy_fits(proxy: Proxy, entry: DatasetEntry) -> None:
    """Raise :class:`InvalidArgumentError` unless the proxy's input shape and class count fit the dataset."""
    proxy.validate_for(input_shape=entry.sample_shape, num_classes=entry.num_classes)


class ProxyStore:
    """The last good proxy of every dataset, in memory and under ``<state_dir>/proxies``.

    Args:
        catalog: the datasets served (a push names one).
        state_dir: the daemon's state directory.
        max_bytes: the largest proxy accepted.
    """

    def __init__(self, catalog: Catalog, state_dir: Path, max_bytes: int) -> None:
        self.catalog = catalog
        self.dir = Path(state_dir) / "proxies"
        self.max_bytes = int(max_bytes)
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
        check_proxy_fits(proxy, entry)
        proxy_version = int(proxy.version)
        if version is not None and version != proxy_version:
            raise InvalidArgumentError(
                f"the upload declares version {version} but the proxy inside has version {proxy_version}; "
                "export the proxy with the version you push"
            )
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
                check_proxy_fits(proxy, entry)
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
