"""Reaching a storage daemon from the command line: the target's form, a short connect deadline, free ports.

Every command that talks to a daemon calls :func:`connect` first: a daemon that is not there is reported within
two connect deadlines (one retry message in between), and a refused token with the daemon's own message, before
any other work starts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nessa.cli.options import UsageError
from nessa.errors import FailedPreconditionError, NessaError

if TYPE_CHECKING:
    import grpc

    from nessa.client import StorageClient

__all__ = [
    "CONNECT_SECONDS",
    "DEFAULT_PORT",
    "DaemonUnavailableError",
    "check_port_free",
    "connect",
    "normalize_target",
    "rpc_failure",
]

#: Port assumed when ``--target`` names only a host (the daemon's default ``--port``).
DEFAULT_PORT = 50051
#: Seconds each connection attempt waits for the daemon.
CONNECT_SECONDS = 2.0
#: Deadline of the quick calls a command makes (list, describe).
CALL_SECONDS = 10.0
_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


class DaemonUnavailableError(NessaError):
    """No storage daemon answers at the target, or it refused the call (exit status 1)."""

    status = "UNAVAILABLE"


def normalize_target(target: str) -> str:
    """``host`` → ``host:50051``; ``host:port`` and ``[v6]:port`` checked; gRPC URIs (``dns:``, ``unix:``) kept.

    Raises:
        UsageError: an empty target, a port that is not a number in 1..65535, or an IPv6 address without brackets.
    """
    text = target.strip()
    example = f"e.g. 127.0.0.1:{DEFAULT_PORT}"
    if not text:
        raise UsageError(f"--target is empty; give the storage daemon's HOST:PORT, {example}")
    if text.startswith(_SCHEMES) or "://" in text:
        return text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise UsageError(f"--target {target!r}: write an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
        if not rest:
            return f"[{host}]:{DEFAULT_PORT}"
        if not rest.startswith(":"):
            raise UsageError(f"--target {target!r}: write HOST:PORT, e.g. [::1]:{DEFAULT_PORT}")
        port = rest[1:]
    elif text.count(":") > 1:
        raise UsageError(f"--target {target!r}: write an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
    else:
        host, sep, port = text.partition(":")
        if not host:
            raise UsageError(f"--target {target!r} has no host; write HOST:PORT, {example}")
        if not sep:
            return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--target {target!r}: the port must be a number in 1..65535; write HOST:PORT, {example}")
    return text


def connect(
    target: str,
    token: str | None = None,
    tls: Any = None,
    *,
    say: Callable[[str], None],
    connect_seconds: float = CONNECT_SECONDS,
) -> StorageClient:
    """A client of the daemon at ``target`` that has answered one call (ListDatasets, which checks the token).

    Waits ``connect_seconds`` for the channel, says once that it retries, waits as long again, then gives up.

    Raises:
        DaemonUnavailableError: nothing answers at ``target``, or the daemon refused the token.
    """
    import grpc

    from nessa.client import StorageClient

    client = StorageClient(target, token=token, tls=tls, timeout=CALL_SECONDS, retry_timeout=0.0)
    for attempt in (1, 2):
        try:
            client.wait_ready(timeout=connect_seconds)
            break
        except grpc.FutureTimeoutError:
            if attempt == 1:
                say(f"no storage daemon answers at {target} yet; retrying for {connect_seconds:g} s")
    else:
        client.close()
        hint = "" if tls else " (or add --tls-ca CA.pem if it serves TLS)"
        raise DaemonUnavailableError(
            f"no storage daemon answers at {target}: start one with `nessa serve --data-dir DIR`, or pass the "
            f"right --target HOST:PORT{hint}"
        )
    try:
        client.datasets()
    except grpc.RpcError as exc:
        client.close()
        raise rpc_failure(exc, target) from exc
    return client


def rpc_failure(exc: grpc.RpcError, target: str) -> NessaError:
    """One error, with one line of text, for a transport-level gRPC failure (unavailable, token, deadline)."""
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return DaemonUnavailableError(
            f"the daemon at {target} refused the call: {details}; pass --token or set NESSA_TOKEN"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return DaemonUnavailableError(
            f"the storage daemon at {target} is unavailable ({details}); check that it runs and --target"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DaemonUnavailableError(f"the storage daemon at {target} did not answer in time ({details})")
    name = code.name if code is not None else "UNKNOWN"
    return DaemonUnavailableError(f"the storage daemon at {target} failed the call ({name}): {details}")


def check_port_free(port: int | None, flag: str, host: str = "0.0.0.0") -> None:
    """Fail with a one-line fix when ``port`` (not ``None`` or 0) cannot be bound on ``host``."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FailedPreconditionError(
                f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another {flag} "
                "(0 picks a free port)"
            ) from None
