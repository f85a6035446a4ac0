"""``nessa status``: what a running daemon serves (health, datasets, proxy versions), from the existing RPCs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nessa.cli.options import Command, human_bytes

__all__ = ["COMMANDS", "add_daemon_flags", "daemon_client"]


def add_daemon_flags(p: argparse.ArgumentParser) -> None:
    """``--target``, ``--token`` / ``--token-file``, ``--tls-ca``: how a client command reaches the daemon."""
    p.add_argument("--target", required=True, help="the storage daemon's HOST[:PORT] (port 50051 when omitted)")
    p.add_argument("--token", default=None, help="bearer token (default: $NESSA_TOKEN; visible in the process list)")
    p.add_argument("--token-file", default=None, metavar="PATH", help="read the bearer token from PATH's first line")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="the CA that signed the daemon's certificate (TLS)")


def daemon_client(args: argparse.Namespace) -> Any:
    """A :class:`~nessa.client.StorageClient` that has reached the daemon (see :func:`nessa.cli.connect.connect`)."""
    from nessa.cli.connect import connect, normalize_target
    from nessa.services.storage.config import DaemonConfig

    token = DaemonConfig.resolve_token(args.token, getattr(args, "token_file", None))
    return connect(
        normalize_target(args.target), token, args.tls_ca, say=lambda line: print(line, file=sys.stderr, flush=True)
    )


def _health(client: Any) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5.0)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _run(args: argparse.Namespace) -> int:
    with daemon_client(args) as client:
        health = _health(client)
        datasets = client.datasets()
        selections = client.selections()
        sessions = client.sessions()
    if args.json:
        info = {
            "target": client.target,
            "health": health,
            "datasets": [
                {
                    "name": d.name,
                    "num_samples": d.num_samples,
                    "num_classes": d.num_classes,
                    "codec": d.codec,
                    "sample_shape": list(d.sample_shape),
                    "dtype": d.dtype,
                    "total_bytes": d.total_bytes,
                    "num_shards": d.num_shards,
                    "proxy_version": d.proxy_version,
                }
                for d in datasets
            ],
            "selections": [
                {"id": s.id, "dataset": s.dataset, "method": s.method, "size": len(s), "session": s.session}
                for s in selections
            ],
            "sessions": sessions,
        }
        print(json.dumps(info, indent=2))
        return 0
    print(f"daemon:   {client.target} ({health})")
    print(f"datasets: {len(datasets)}")
    for d in datasets:
        kind = f"{d.dtype}{list(d.sample_shape)}" if d.codec == "raw" else d.codec
        proxy = f"proxy v{d.proxy_version}" if d.proxy_version is not None else "no proxy"
        print(
            f"  {d.name}: {d.num_samples} samples, {d.num_classes} classes, {kind}, {d.num_shards} shard(s), "
            f"{human_bytes(d.total_bytes)}, {proxy}"
        )
    print(f"selections kept: {len(selections)}" + (f" (newest {selections[0].id})" if selections else ""))
    print(f"sessions: {len(sessions)}")
    for st in sessions:
        print(
            f"  {st['session']}: {st['dataset']} {st['method']}, {st['rounds']} round(s), {st['parts']} part(s), "
            f"{human_bytes(st['state_bytes'])} of state"
        )
    return 0


def _add(p: argparse.ArgumentParser) -> None:
    add_daemon_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


COMMANDS = {
    "status": Command(
        help="what a running storage daemon serves: health, datasets, proxy versions",
        add=_add,
        run=_run,
    ),
}
