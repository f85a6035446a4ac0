"""The client against secured daemons: bearer token, TLS; settings-only pickling; argument checks."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from daemon_helpers import health_status, make_toy, running
from grpc_health.v1 import health_pb2

from nessa.client import StorageClient
from nessa.errors import InvalidArgumentError
from nessa.services.storage.config import ENV_TOKEN, DaemonConfig

OPENSSL_HINT = "openssl not found: install it (apt-get install -y openssl) to generate the test certificate"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-data")
    make_toy(root, n=400, shards=1)
    return root


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl is not None, OPENSSL_HINT
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


def test_bearer_token(root: Path) -> None:
    with running(root, token="t0ken", warmup=False) as d:
        for client in (StorageClient(d.address), StorageClient(d.address, token="wrong")):
            with pytest.raises(grpc.RpcError) as info:
                client.datasets()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                list(client.stream([1, 2], dataset="toy"))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in _details(StorageClient(d.address).describe, "toy")
        assert "wrong bearer token" in _details(StorageClient(d.address, token="nope").describe, "toy")
        good = StorageClient(d.address, token="t0ken")
        assert [i.name for i in good.datasets()] == ["toy"]
        sel = good.select("toy", "random", 0.1)
        assert sum(len(b) for b in good.stream(sel)) == len(sel)
        # Health checks need no token (orchestrators probe without the secret).
        assert health_status(d.address) == health_pb2.HealthCheckResponse.SERVING


def _details(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return str(info.value.details())


def test_tls_with_token(root: Path, cert: tuple[Path, Path]) -> None:
    crt, key = cert
    with running(root, tls_cert=crt, tls_key=key, token="t", warmup=False) as d:
        client = StorageClient(d.address, token="t", tls=crt)
        assert client.describe("toy").num_samples == 400
        sel = client.select("toy", "balanced", 0.25)
        assert sum(len(b) for b in client.stream(sel)) == 100
        also = StorageClient(d.address, token="t", tls=crt.read_bytes())
        assert also.datasets()[0].name == "toy"
        plain = StorageClient(d.address, token="t", retry_timeout=0.3, timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            plain.datasets()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_config_checks_and_token_from_env(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_TOKEN, "from-env")
    assert DaemonConfig.token_from_env(None) == "from-env"
    assert DaemonConfig.token_from_env("flag") == "flag"
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        DaemonConfig(data_dir=tmp_path / "missing")
    with pytest.raises(InvalidArgumentError, match="both --tls-cert and --tls-key"):
        DaemonConfig(data_dir=root, tls_cert=root / "x.pem")
    with pytest.raises(InvalidArgumentError, match="token is empty"):
        DaemonConfig(data_dir=root, token=" ")


def test_client_pickles_as_settings_and_reconnects(root: Path) -> None:
    with running(root, warmup=False) as d:
        client = StorageClient(d.address, timeout=5)
        assert client.datasets()
        clone = pickle.loads(pickle.dumps(client))
        assert clone._channel is None and clone.target == client.target
        assert clone.describe("toy").num_samples == 400
    with pytest.raises(InvalidArgumentError, match="exactly one budget"):
        client.select("toy", "random")
    with pytest.raises(InvalidArgumentError, match="dataset name"):
        client.stream([1, 2])
    with pytest.raises(InvalidArgumentError, match="host:port"):
        StorageClient("")
