"""A tiny gRPC health probe for the storage daemon (the container's ``HEALTHCHECK``).

Asks the standard ``grpc.health.v1.Health/Check`` of the daemon and exits 0 only when it answers ``SERVING``,
so ``docker compose`` can hold the trainer back until the datasets are open and the kernels are built::

    python -m nessa.services.storage.healthcheck --target 127.0.0.1:50051

Health checks need no bearer token (the daemon exempts the health service). Exit status: 0 serving, 1 not
serving or unreachable, 2 bad arguments. One line on stdout says which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["build_parser", "check", "main"]

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(
    target: str,
    service: str = "",
    timeout: float = 3.0,
    tls_ca: Path | None = None,
    server_name: str | None = None,
) -> tuple[bool, str]:
    """Ask the daemon at ``target`` whether ``service`` is serving.

    Args:
        target: ``host:port`` of the daemon's gRPC port.
        service: service name to ask about; ``""`` is the whole server.
        timeout: deadline of the call in seconds.
        tls_ca: PEM root certificate(s) to trust; when given the probe speaks TLS.
        server_name: host name to check the server certificate against instead of the target's host.

    Returns:
        ``(serving, description)``: whether the answer was ``SERVING``, and a one-line description of the answer
        or of the failure.
    """
    options: list[tuple[str, str]] = []
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        return False, f"{target}: health check failed with {name}: {details}"
    finally:
        channel.close()
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == SERVING, f"{target}: {status_name}"


def build_parser() -> argparse.ArgumentParser:
    """Build the probe's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m nessa.services.storage.healthcheck",
        description="Exit 0 when the NeSSA storage daemon's gRPC health service answers SERVING, else 1.",
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="daemon address host:port (default %(default)s)")
    parser.add_argument("--service", default="", help="service name to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds (default %(default)s)")
    parser.add_argument("--tls-ca", type=Path, default=None, help="PEM root certificate; speak TLS when given")
    parser.add_argument("--server-name", default=None, help="host name expected in the server certificate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe; returns the exit status (0 serving, 1 not, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0 seconds; got {args.timeout}")
    if args.tls_ca is not None and not args.tls_ca.is_file():
        parser.error(f"--tls-ca file {str(args.tls_ca)!r} does not exist; give the PEM the daemon's cert chains to")
    serving, description = check(args.target, args.service, args.timeout, args.tls_ca, args.server_name)
    print(description)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
