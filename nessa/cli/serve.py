"""``nessa serve``: the storage daemon, its flags generated from :class:`~nessa.services.storage.config.DaemonConfig`.

The command line is the composition root: it alone reaches into ``nessa.services`` (imported when the command
runs, so the library never depends on the daemon).
"""

from __future__ import annotations

import argparse

from nessa.cli.options import Command, Flag, add_config_flags, given

__all__ = ["COMMANDS"]

#: Where a flag differs from its field's derived form.
_FLAGS = {
    "metrics_port": Flag(help="Prometheus /metrics port; 0 picks a free one, -1 disables"),
    "token": Flag(help="bearer token clients must send (none: no check)"),
    "tls_cert": Flag(help="PEM certificate chain; with --tls-key the daemon speaks TLS only"),
    "state_dir": Flag(help="where proxies and selections persist across restarts"),
    "grace_seconds": Flag(names=("--grace-seconds", "--grace")),
}


def _add(p: argparse.ArgumentParser) -> None:
    from nessa.proxy import ENGINES
    from nessa.services.storage.config import DaemonConfig

    flags = {**_FLAGS, "engine": Flag(choices=ENGINES)}
    add_config_flags(p, DaemonConfig, flags, defaults={"token": "$NESSA_TOKEN", "state_dir": "<data-dir>/.nessa-state"})
    p.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the bearer token from the first line of PATH (keep it chmod 600): unlike --token, it is not "
        "visible in the process list",
    )
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default: info)"
    )


def _run(args: argparse.Namespace) -> int:
    import logging

    from nessa.cli.connect import check_port_free
    from nessa.services.storage.config import DaemonConfig
    from nessa.services.storage.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fields = given(args, DaemonConfig)
    if fields.get("metrics_port", 0) is not None and fields.get("metrics_port", 0) < 0:
        fields["metrics_port"] = None
    fields["token"] = DaemonConfig.resolve_token(fields.get("token"), args.token_file)
    config = DaemonConfig(**fields)
    check_port_free(config.port, "--port", host=config.host)
    check_port_free(config.metrics_port, "--metrics-port", host=config.host)
    return serve(config)


COMMANDS = {
    "serve": Command(
        help="run the storage daemon over every dataset under a directory",
        description="Serve every dataset under --data-dir over gRPC (nessa.v1.Storage, health, reflection) and "
        "Prometheus metrics. SIGTERM shuts down gracefully.",
        add=_add,
        run=_run,
    ),
}
