"""Configuration of the storage daemon: one frozen dataclass built from CLI flags (and ``NESSA_TOKEN``).

The bearer token: ``--token`` on a command line is visible to every user of the machine (``ps``), so prefer
``--token-file PATH`` (the file's first line; keep it ``chmod 600``) or the ``NESSA_TOKEN`` environment variable;
:meth:`DaemonConfig.resolve_token` reads them in that order of preference: file, flag, environment.

``/metrics`` (Prometheus) answers without the token and names the datasets served (their names, sizes and
traffic; never sample data): it listens on ``host`` like the gRPC port, so on a shared network bind the daemon to
a private address or firewall ``metrics_port``, or turn it off (``metrics_port=None``, ``--metrics-port -1``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nessa.errors import InvalidArgumentError
from nessa.services.storage.link import parse_rate

__all__ = ["ENV_TOKEN", "MAX_WORKERS", "MIB", "STATE_DIR_NAME", "DaemonConfig", "read_token_file"]

MIB = 1 << 20
ENV_TOKEN = "NESSA_TOKEN"
#: Hidden directory under the data directory where the daemon keeps proxies and selections across restarts.
STATE_DIR_NAME = ".nessa-state"
#: Most stream worker processes (``--workers``).
MAX_WORKERS = 64


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the storage daemon needs to start.

    Attributes:
        data_dir: directory whose sub-directories are datasets (each with a ``manifest.json``).
        host: address to listen on.
        port: gRPC port; 0 picks a free one.
        metrics_port: Prometheus ``/metrics`` port; 0 picks a free one, ``None`` serves no metrics.
        tls_cert: PEM certificate chain path; with ``tls_key`` the daemon speaks TLS only.
        tls_key: PEM private key path.
        token: bearer token every call but health checks must carry; ``None`` disables the check.
        state_dir: where proxies and selections survive restarts; default ``<data_dir>/.nessa-state``.
        engine: default proxy engine (``opencl``: the near-storage path; ``torch``; ``numpy`` only when asked).
        max_workers: gRPC handler threads; also the most ``nessa.v1.Storage`` RPCs in progress (more get
            RESOURCE_EXHAUSTED). Health checks, reflection and refused calls do not count: they run on a small pool
            of their own, and unauthenticated calls are refused before they take a slot.
        max_streams_per_client: most streaming Storage calls (StreamSamples, PushProxy) one client may have in
            progress; a client is its address plus the ``x-nessa-client`` metadata value if it sends one.
        stream_idle_seconds: a streaming call whose client stops reading (or, for PushProxy, sending) for longer
            than this is cancelled (and counted in ``nessa_stalled_streams_total``).
        max_health_watches: most health ``Watch`` streams open at once (they hold no thread).
        max_reflection_streams: most reflection streams at once.
        max_message_bytes: largest gRPC message sent or received.
        default_batch_bytes: sample payload per stream message when the request does not say.
        max_proxy_bytes: largest proxy accepted.
        max_concurrent_selections: Select calls that may run at once (more get RESOURCE_EXHAUSTED).
        selection_cache_bytes: memory for recent selections kept in memory (older ones are reloaded from disk).
        max_saved_selections: selections kept on disk (oldest removed first).
        cpus: pin the daemon to these CPUs (e.g. ``"0"`` or ``"0-3"``; "" leaves it alone), with PoCL's thread
            count matched: a storage node's cores, apart from a trainer's on the same machine.
        max_sessions: selection sessions (session, dataset, method) whose selector state is kept (least recently
            used dropped first).
        proxy_batch_size: samples per proxy forward batch (cancellation is checked between batches).
        max_forward_bytes: most memory one batch's proxy forward may need (checked when a proxy is pushed).
        max_forward_macs: most multiply-adds of one batch's proxy forward (checked when a proxy is pushed).
        grace_seconds: on shutdown, how long in-flight calls may finish.
        drain_seconds: on shutdown, how long health reports NOT_SERVING before new calls are refused.
        warmup: build the OpenCL kernels before reporting SERVING.
        workers: processes serving streams (1: this one only). With N > 1 the daemon starts N - 1 stream worker
            processes that share the port (``SO_REUSEPORT``): each serves StreamSamples itself and forwards every
            other call to this process, where selection jobs, sessions and proxies live (see ``docs/streaming.md``).
        link_rate: emulate a storage link of this rate (e.g. ``1Gbit``, ``10Gbit``, ``125MB/s``; "" for none):
            stream messages and pushed proxy chunks are paced by a token bucket, one per direction, shared by the
            workers (an emulation: rate only, see :mod:`nessa.services.storage.link`).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9400
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    state_dir: Path | None = None
    engine: str = "opencl"
    max_workers: int = 16
    max_streams_per_client: int = 8
    stream_idle_seconds: float = 60.0
    max_health_watches: int = 64
    max_reflection_streams: int = 2
    max_message_bytes: int = 4 * MIB
    default_batch_bytes: int = 1 * MIB
    max_proxy_bytes: int = 512 * MIB
    max_concurrent_selections: int = 4
    selection_cache_bytes: int = 256 * MIB
    max_saved_selections: int = 256
    max_sessions: int = 256
    cpus: str = ""
    proxy_batch_size: int = 1024
    max_forward_bytes: int = 1 << 30
    max_forward_macs: int = 10**12
    grace_seconds: float = 10.0
    drain_seconds: float = 1.0
    warmup: bool = True
    workers: int = 1
    link_rate: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not self.data_dir.is_dir():
            raise InvalidArgumentError(
                f"data directory {str(self.data_dir)!r} does not exist; create it and ingest datasets with "
                "`nessa ingest`, or pass the right --data-dir"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgumentError("TLS needs both --tls-cert and --tls-key (or neither for plaintext)")
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                if not Path(value).is_file():
                    raise InvalidArgumentError(f"--{name.replace('_', '-')} file {str(value)!r} does not exist")
        if self.token is not None and not self.token.strip():
            raise InvalidArgumentError(f"the bearer token is empty; give a non-empty --token or unset {ENV_TOKEN}")
        if not 0 <= self.port < 65536:
            raise InvalidArgumentError(f"port {self.port} is not in [0, 65535]")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise InvalidArgumentError(f"metrics port {self.metrics_port} is not in [0, 65535]")
        if self.max_message_bytes < 64 * 1024:
            raise InvalidArgumentError(f"max_message_bytes must be >= 65536; got {self.max_message_bytes}")
        if not 0 < self.default_batch_bytes <= self.max_batch_bytes:
            raise InvalidArgumentError(
                f"default_batch_bytes must be in (0, {self.max_batch_bytes}] (the message limit less headroom)"
            )
        if not self.stream_idle_seconds > 0:
            raise InvalidArgumentError(f"stream_idle_seconds must be > 0; got {self.stream_idle_seconds}")
        for name in (
            "max_workers",
            "max_concurrent_selections",
            "proxy_batch_size",
            "max_saved_selections",
            "max_sessions",
            "max_streams_per_client",
            "max_health_watches",
            "max_reflection_streams",
            "max_forward_bytes",
            "max_forward_macs",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidArgumentError(
                f"workers must be in [1, {MAX_WORKERS}]; got {self.workers} (one per core the streams may use)"
            )
        if self.link_rate:
            parse_rate(self.link_rate)  # a clear error now, not at the first stream
        if self.state_dir is None:
            object.__setattr__(self, "state_dir", self.data_dir / STATE_DIR_NAME)
        else:
            object.__setattr__(self, "state_dir", Path(self.state_dir))

    @property
    def max_batch_bytes(self) -> int:
        """Most sample payload one stream message may carry: the message limit less 64 KiB for metadata."""
        return self.max_message_bytes - 64 * 1024

    @property
    def link_bytes_per_second(self) -> float | None:
        """The emulated link's rate in bytes per second, or ``None`` for no pacing."""
        return parse_rate(self.link_rate) if self.link_rate else None

    @property
    def tls(self) -> bool:
        """Whether the daemon serves TLS."""
        return self.tls_cert is not None

    @property
    def state_path(self) -> Path:
        """The state directory (always set after construction)."""
        if self.state_dir is None:
            raise InvalidArgumentError("state_dir is unset")
        return self.state_dir

    @staticmethod
    def token_from_env(flag: str | None) -> str | None:
        """The token from ``--token`` if given, else from ``NESSA_TOKEN``, else ``None``."""
        return flag if flag else (os.environ.get(ENV_TOKEN) or None)

    @staticmethod
    def resolve_token(flag: str | None = None, token_file: str | Path | None = None) -> str | None:
        """The token from ``--token-file`` if given, else ``--token``, else ``NESSA_TOKEN``, else ``None``.

        Raises:
            InvalidArgumentError: the token file is missing, unreadable or empty.
        """
        if token_file:
            return read_token_file(token_file)
        return DaemonConfig.token_from_env(flag)


def read_token_file(path: str | Path) -> str:
    """The bearer token in ``path``: its first line, stripped.

    Raises:
        InvalidArgumentError: the file is missing, unreadable or its first line is empty.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read the token file {str(path)!r} ({type(exc).__name__})") from exc
    if not token:
        raise InvalidArgumentError(f"the token file {str(path)!r} is empty; put the token on its first line")
    return token
