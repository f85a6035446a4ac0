"""``--target`` forms, and the one-line refusal of a port that is taken."""

from __future__ import annotations

import socket

import pytest

from nessa.cli.connect import DEFAULT_PORT, check_port_free, normalize_target
from nessa.cli.options import UsageError
from nessa.errors import FailedPreconditionError
from nessa.services.storage.config import DaemonConfig


def test_the_default_port_is_the_daemons() -> None:
    assert DEFAULT_PORT == DaemonConfig.port


@pytest.mark.parametrize(
    "given,expected",
    [
        ("localhost", f"localhost:{DEFAULT_PORT}"),
        (" storage ", f"storage:{DEFAULT_PORT}"),
        ("10.0.0.2:6000", "10.0.0.2:6000"),
        ("[::1]", f"[::1]:{DEFAULT_PORT}"),
        ("[::1]:7000", "[::1]:7000"),
        ("dns:///storage:50051", "dns:///storage:50051"),
        ("unix:/run/nessa.sock", "unix:/run/nessa.sock"),
    ],
)
def test_targets_are_completed_or_kept(given: str, expected: str) -> None:
    assert normalize_target(given) == expected


@pytest.mark.parametrize(
    "bad,says",
    [
        ("", "--target is empty"),
        ("host:http", "port must be a number"),
        ("host:0", "port must be a number"),
        ("host:70000", "port must be a number"),
        (":50051", "has no host"),
        ("::1", "in brackets"),
        ("[::1", "in brackets"),
        ("[::1]7000", "write HOST:PORT"),
    ],
)
def test_bad_targets_say_how_to_write_one(bad: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        normalize_target(bad)


def test_a_listening_port_is_refused_and_a_free_one_passes() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(FailedPreconditionError, match=f"--metrics-port {port}: cannot listen on 0.0.0.0:{port}"):
            check_port_free(port, "--metrics-port")
    check_port_free(port, "--metrics-port")  # closed again
    check_port_free(None, "--metrics-port")
    check_port_free(0, "--metrics-port")
