"""Fuzz and fault suite: generated bad input on every RPC of a real daemon, and faults in its stored data.

Every reply must carry one of the documented status codes (never INTERNAL or UNKNOWN) with a bounded message that
names no server path; after every group of cases the daemon is SERVING and the last good proxy is still in force.
The cases are generated from seeded random choices, so a failure names its seed and case and reproduces. The
fast part runs by default; ``slow`` adds more seeds, and a load test (8 streaming clients plus selections).
Counts by status code are printed at the end of the module (``pytest -s`` shows them).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from daemon_helpers import ServeProcess, make_toy, running
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proxy_helpers import conv_proxy, mlp_proxy

from nessa.client import StorageClient
from nessa.store import ingest_arrays
from nessa.store.atomic import STAGING_PATTERN
from nessa.v1 import storage_pb2 as pb

TOKEN = "fuzz-token"
N = 600
#: What a client may be told; INTERNAL and UNKNOWN are bugs.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DATA_LOSS,
}
MAX_DETAILS = 2100
#: Every RPC of nessa.v1.Storage: (name, kind), kind = "uu" unary, "us" server stream, "su" client stream.
RPCS = [
    (m.name, "su" if m.client_streaming else "us" if m.server_streaming else "uu")
    for m in pb.DESCRIPTOR.services_by_name["Storage"].methods
]

TALLY: Counter[str] = Counter()


def _identity(data: bytes) -> bytes:
    return data


class Prober:
    """Raw calls (bytes in, status out) to one daemon; every result is checked and tallied."""

    def __init__(self, address: str, data_dir: Path) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_metadata_size", 1 << 20)])
        self.data_dir = data_dir
        self.auth = (("authorization", f"Bearer {TOKEN}"),)

    def call(
        self, rpc: str, kind: str, payload: bytes | list[bytes], token: bool = True
    ) -> tuple[grpc.StatusCode, str]:
        meta = self.auth if token else ()
        path = f"/nessa.v1.Storage/{rpc}"
        try:
            if kind == "uu":
                self.channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)(
                    payload, metadata=meta, timeout=60
                )
            elif kind == "us":
                stream = self.channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)
                for _ in stream(payload, metadata=meta, timeout=60):
                    pass
            else:
                chunks = payload if isinstance(payload, list) else [payload]
                self.channel.stream_unary(path, request_serializer=_identity, response_deserializer=_identity)(
                    iter(chunks), metadata=meta, timeout=60
                )
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    def check(self, case: str, rpc: str, kind: str, payload: bytes | list[bytes], token: bool = True) -> str:
        """Run one case; assert a documented code and a bounded message without server paths; return the code."""
        code, details = self.call(rpc, kind, payload, token)
        TALLY[code.name] += 1
        assert code in DOCUMENTED, f"{case}: {rpc} answered {code.name}: {details[:300]}"
        if code != grpc.StatusCode.OK:
            assert details.strip(), f"{case}: {rpc} {code.name} with no message"
        assert len(details) <= MAX_DETAILS, f"{case}: {rpc} message of {len(details)} characters"
        assert str(self.data_dir) not in details, f"{case}: {rpc} message names a server path: {details[:300]}"
        return code.name

    def alive(self, good_version: int) -> None:
        """The daemon serves health and the last good proxy is in force."""
        health = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        describe = self.channel.unary_unary(
            "/nessa.v1.Storage/DescribeDataset",
            request_serializer=pb.DescribeDatasetRequest.SerializeToString,
            response_deserializer=pb.DatasetInfo.FromString,
        )
        info = describe(pb.DescribeDatasetRequest(dataset="toy"), metadata=self.auth, timeout=30)
        assert info.proxy_version == good_version


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    make_toy(root, n=N, shards=2)
    images = np.random.default_rng(1).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    ingest_arrays(images, np.arange(40) % 4, root / "images")
    return root


@pytest.fixture(scope="module")
def daemon(data_dir: Path) -> Iterator[Any]:
    # A small forward-memory cap, so that a wide proxy meets it (the good proxies need a few MiB).
    with running(data_dir, token=TOKEN, max_workers=8, max_forward_bytes=64 << 20) as d:
        yield d


@pytest.fixture(scope="module")
def setup(daemon: Any, data_dir: Path) -> Iterator[tuple[Prober, StorageClient, int, str]]:
    client = StorageClient(daemon.address, token=TOKEN, timeout=60)
    good = client.push_proxy(conv_proxy(1), "toy").version
    selection = client.select("toy", "craig", 0.1, seed=0).id
    prober = Prober(daemon.address, data_dir)
    yield prober, client, good, selection
    prober.channel.close()
    total = sum(TALLY.values())
    print(f"\nfuzz: {total} generated cases; by status code: {dict(sorted(TALLY.items()))}")


# --- generators ---------------------------------------------------------------------------------------------------

NAMES = ["", "toy", "toy\n", " toy", "../toy", "/etc", "a" * 100_000, "tôy", "toy\x00", "...", "-x", "images", "nope"]
METHODS = ["random", "craig", "crest", "sas", "adacore", "balanced", "", "zap", "m" * 5000, "CRAIG", "random\n"]
FRACTIONS = [0.0, -1.0, 1.5, math.nan, math.inf, -math.inf, 1e-300, 0.5, 1.0, 5e-324]
COUNTS = [0, 1, 2**63, 2**64 - 1, N, N + 1, 2**31]
RULES = ["", "global", "equal", "proportional", "per_class", "x" * 1000, "GLOBAL"]
ENGINES = ["", "opencl", "numpy", "torch", "gpu", "e" * 1000]
SESSIONS = ["", "s1", "x" * 200, "bad name!", "\n", "a:b@c"]
OPTION_VALUES = [
    "1", "0", "-1", "1e999", "NaN", "Infinity", "true", "null", '"lazy"', "[" * 5000 + "]" * 5000, "9" * 5000,
    '{"a": 1}', "[[1, 2], [3, 4]]", "not json", "", '"' + "s" * 100_000 + '"', str(2**63), "0.5", "[]",
]  # fmt: skip
OPTION_KEYS = [
    "block_size", "learned_window", "drop_learned", "epsilon", "features", "num_augmentations", "budget_rule",
    "x", "k" * 1000, "", "minibatch_size", "kmeans_max_iter", "backend",
]  # fmt: skip
CURSORS = ["", "abc", "0123456789abcdef.1", "c" * 100_000, "0123456789abcdef.99999999999999999999", "\n"]


def _select_request(rng: random.Random) -> pb.SelectRequest:
    req = pb.SelectRequest(dataset=rng.choice(NAMES[:6] + ["toy"] * 4), method=rng.choice(METHODS))
    if rng.random() < 0.5:
        req.fraction = rng.choice(FRACTIONS)
    elif rng.random() < 0.8:
        req.count = rng.choice(COUNTS)
    req.budget_rule = rng.choice(RULES)
    req.seed = rng.choice([0, 1, 2**64 - 1])
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        req.options[rng.choice(OPTION_KEYS)] = rng.choice(OPTION_VALUES)
    if rng.random() < 0.3:
        req.candidates.extend(rng.choice([[-1], [0, 0], [N - 1], list(range(0, N, 3)), [2**62], [-(2**63)]]))
    req.engine = rng.choice(ENGINES)
    req.session = rng.choice(SESSIONS)
    if rng.random() < 0.3:
        req.proxy_version = rng.choice([1, -1, 2**62, 0])
    return req


def _stream_request(rng: random.Random, selection: str) -> pb.StreamRequest:
    req = pb.StreamRequest()
    if rng.random() < 0.5:
        req.selection_id = rng.choice([selection, "sel-" + "0" * 24, "x" * 1000, "", "../../etc/passwd"])
    else:
        req.dataset = rng.choice(NAMES[:6] + ["toy"] * 4)
        req.indices.indices.extend(rng.choice([[], [-1], [N], [0] * 5, [2**62], list(range(0, N, 7))]))
    req.cursor = rng.choice(CURSORS)
    if rng.random() < 0.5:
        req.partition.world_size = rng.choice([0, 1, 2, 2**32 - 1])
        req.partition.rank = rng.choice([0, 1, 5, 2**32 - 1])
        req.partition.num_workers = rng.choice([0, 1, 3, 2**32 - 1])
        req.partition.worker = rng.choice([0, 2, 2**32 - 1])
        req.partition.block_size = rng.choice([0, 1, 2**32 - 1])
        req.partition.skip = rng.choice([0, 1, 2**64 - 1])
        req.partition.worker_skip = rng.choice([0, 3, 2**64 - 1])
    req.batch_size = rng.choice([0, 1, 65536, 65537, 2**32 - 1])
    req.max_batch_bytes = rng.choice([0, 1, 1 << 20, 2**32 - 1])
    if rng.random() < 0.3:
        req.shuffle_seed = rng.choice([0, 2**64 - 1])
    req.metadata_only = rng.random() < 0.3
    return req


def _valid_requests(selection: str) -> dict[str, bytes]:
    return {
        "ListDatasets": pb.ListDatasetsRequest().SerializeToString(),
        "DescribeDataset": pb.DescribeDatasetRequest(dataset="toy").SerializeToString(),
        "PushProxy": pb.ProxyChunk(
            dataset="toy", data=b"\x00" * 64, total_size=64, sha256="0" * 64
        ).SerializeToString(),
        "Select": pb.SelectRequest(dataset="toy", method="random", fraction=0.1, seed=3).SerializeToString(),
        "StreamSamples": pb.StreamRequest(selection_id=selection).SerializeToString(),
        "GetSelection": pb.GetSelectionRequest(id=selection).SerializeToString(),
        "ListSelections": pb.ListSelectionsRequest(dataset="toy").SerializeToString(),
        "ListSessions": pb.ListSessionsRequest().SerializeToString(),
    }


def _mutate(rng: random.Random, data: bytes) -> bytes:
    blob = bytearray(data)
    how = rng.choice(["flip", "truncate", "insert", "tag"])
    if how == "flip" and blob:
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    elif how == "truncate" and blob:
        blob = blob[: rng.randrange(len(blob))]
    elif how == "insert":
        at = rng.randrange(len(blob) + 1)
        blob[at:at] = rng.randbytes(rng.randint(1, 16))
    else:  # a field number / wire type nobody defined, with a length running past the end
        blob += bytes([rng.randrange(256), 0xFF, 0xFF, 0xFF, 0x0F])
    return bytes(blob)


def garbage_cases(seed: int, n: int) -> Iterator[tuple[str, str, str, bytes | list[bytes], bool]]:
    """``n`` cases of random or mutated request bytes, with and without the token."""
    rng = random.Random(seed)
    valid = _valid_requests("sel-" + "0" * 24)
    for i in range(n):
        rpc, kind = RPCS[i % len(RPCS)]
        if rng.random() < 0.5:
            payload = _mutate(rng, valid.get(rpc, b""))
        else:
            payload = rng.randbytes(rng.choice([0, 1, 3, 17, 200]))
        if kind == "su":
            payload_out: bytes | list[bytes] = [payload] * rng.randint(1, 3)
        else:
            payload_out = payload
        yield f"garbage seed={seed} case={i}", rpc, kind, payload_out, rng.random() < 0.7


def value_cases(seed: int, n: int, selection: str) -> Iterator[tuple[str, str, str, bytes]]:
    """``n`` well-formed requests with bad (or edge) values on every RPC."""
    rng = random.Random(seed)
    for i in range(n):
        pick = i % 6
        case = f"values seed={seed} case={i}"
        if pick in (0, 1):
            yield case, "Select", "uu", _select_request(rng).SerializeToString()
        elif pick == 2:
            yield case, "StreamSamples", "us", _stream_request(rng, selection).SerializeToString()
        elif pick == 3:
            yield (
                case,
                "DescribeDataset",
                "uu",
                pb.DescribeDatasetRequest(dataset=rng.choice(NAMES)).SerializeToString(),
            )
        elif pick == 4:
            sid = rng.choice([selection, "sel-" + "f" * 24, "x" * 1_000_000, "", "sel-../../x", "SEL-" + "0" * 24])
            yield case, "GetSelection", "uu", pb.GetSelectionRequest(id=sid).SerializeToString()
        else:
            yield case, "ListSelections", "uu", pb.ListSelectionsRequest(dataset=rng.choice(NAMES)).SerializeToString()


def _chunks(
    dataset: str, data: bytes, size: int = 1 << 16, sha: str | None = None, total: int | None = None
) -> list[bytes]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        msg = pb.ProxyChunk(data=piece)
        if i == 0:
            msg.dataset = dataset
            msg.total_size = len(data) if total is None else total
        if i == len(pieces) - 1:
            msg.sha256 = hashlib.sha256(data).hexdigest() if sha is None else sha
        out.append(msg.SerializeToString())
    return out


def proxy_cases(seed: int) -> Iterator[tuple[str, list[bytes], set[str]]]:
    """Adversarial proxy uploads, each with the codes it may get (never OK: none of them can serve)."""
    rng = random.Random(seed)
    good = conv_proxy(2)
    bad = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "FAILED_PRECONDITION"}
    yield "uint8 input for a float32 dataset", _chunks("toy", mlp_proxy(3, dtype="uint8")), {"INVALID_ARGUMENT"}
    yield "conv padding 2^31", _chunks("toy", conv_proxy(4, 2**31)), {"INVALID_ARGUMENT"}
    yield "conv padding 2^18", _chunks("toy", conv_proxy(5, 2**18)), {"INVALID_ARGUMENT"}
    yield (
        "4096 channels: over the forward-memory cap",
        _chunks("toy", conv_proxy(6, channels=4096)),
        {"RESOURCE_EXHAUSTED"},
    )
    yield (
        "infinite logits: refused by the dry run",
        _chunks("toy", conv_proxy(7, weight_scale=3e38)),
        {"INVALID_ARGUMENT"},
    )
    yield "39 inputs for 40-wide samples", _chunks("toy", mlp_proxy(8, in_features=39)), {"INVALID_ARGUMENT"}
    yield "7 classes for a 10-class dataset", _chunks("toy", mlp_proxy(9, num_classes=7)), {"INVALID_ARGUMENT"}
    yield "a proxy for another dataset's shape", _chunks("images", good), {"INVALID_ARGUMENT"}
    yield "unknown dataset", _chunks("nope", good), {"NOT_FOUND"}
    yield "wrong sha256", _chunks("toy", good, sha="0" * 64), {"INVALID_ARGUMENT"}
    yield "total_size too small", _chunks("toy", good, total=len(good) - 1), bad
    yield "total_size 2^63", _chunks("toy", good, total=2**63), {"RESOURCE_EXHAUSTED"}
    yield "empty upload", [], bad
    for _ in range(6):
        blob = bytearray(good)
        at = rng.randrange(len(blob))
        blob[at] ^= 1 << rng.randrange(8)
        yield f"flipped bit at byte {at} (sha256 matching)", _chunks("toy", bytes(blob)), bad | {"OK"}
    for _ in range(3):
        cut = rng.randrange(1, len(good))
        yield f"truncated to {cut} bytes (sha256 matching)", _chunks("toy", good[:cut]), bad
    yield "random bytes", _chunks("toy", rng.randbytes(5000)), bad


# --- the fast part -------------------------------------------------------------------------------------------------


def test_garbage_bytes_on_every_rpc(setup: tuple[Prober, StorageClient, int, str]) -> None:
    prober, _client, good, _sel = setup
    codes = Counter(prober.check(*case) for case in garbage_cases(seed=1, n=96))
    assert codes["INVALID_ARGUMENT"] > 0 and codes["UNAUTHENTICATED"] > 0
    prober.alive(good)
    # Garbage without a token is refused for the token, before its bytes are looked at.
    for rpc, kind in RPCS:
        code, details = prober.call(rpc, kind, b"\xff\xff\xff" if kind != "su" else [b"\xff"], token=False)
        TALLY[code.name] += 1
        assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details


def test_bad_values_on_every_rpc(setup: tuple[Prober, StorageClient, int, str]) -> None:
    prober, _client, good, selection = setup
    codes: Counter[str] = Counter()
    for i, case in enumerate(value_cases(seed=2, n=84, selection=selection)):
        codes[prober.check(*case)] += 1
        if i % 20 == 19:
            prober.alive(good)
    prober.alive(good)
    assert codes["INVALID_ARGUMENT"] > 0


def test_adversarial_proxies_never_replace_the_good_one(setup: tuple[Prober, StorageClient, int, str]) -> None:
    prober, client, good, _sel = setup
    for case, chunks, allowed in proxy_cases(seed=3):
        code = prober.check(case, "PushProxy", "su", chunks)
        assert code in allowed, (case, code)
        if code == "OK":  # a flipped bit in a weight can still be a sound proxy: it then replaced the good one
            good = client.describe("toy").proxy_version or good
        prober.alive(good)
    assert len(client.select("toy", "craig", 0.1, seed=5, proxy_version=good)) == N // 10


def test_messages_quote_a_bounded_prefix(setup: tuple[Prober, StorageClient, int, str]) -> None:
    prober, _client, _good, _sel = setup
    huge = "q" * 100_000
    many = {f"k{i}": "1" for i in range(10_000)}
    cases = [
        ("DescribeDataset", pb.DescribeDatasetRequest(dataset=huge)),
        ("GetSelection", pb.GetSelectionRequest(id="sel-" + huge)),
        ("Select", pb.SelectRequest(dataset="toy", method=huge, fraction=0.1)),
        ("Select", pb.SelectRequest(dataset="toy", method="random", fraction=0.1, options=many)),
        ("Select", pb.SelectRequest(dataset="toy", method="random", fraction=0.1, options={"x": "[" * 100_000})),
        ("Select", pb.SelectRequest(dataset="toy", method="craig", fraction=0.1,
                                    options={"learned_window": str(10**18)})),
    ]  # fmt: skip
    for rpc, request in cases:
        code, details = prober.call(rpc, "uu", request.SerializeToString())
        TALLY[code.name] += 1
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (rpc, details[:200])
        assert len(details) < 600 and "q" * 100 not in details, details[:300]
    code, details = prober.call(
        "StreamSamples",
        "us",
        pb.StreamRequest(dataset="toy", indices=pb.IndexList(indices=[1]), cursor=huge).SerializeToString(),
    )
    TALLY[code.name] += 1
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 600


# --- faults --------------------------------------------------------------------------------------------------------


def _flip_in_value(shard_file: Path, value: bytes) -> None:
    blob = bytearray(shard_file.read_bytes())
    at = blob.find(value)
    assert at >= 0
    blob[at + 3] ^= 0x10
    shard_file.write_bytes(bytes(blob))


def _kill_an_ingest(parent: Path) -> Path:
    """Run an ingest into ``parent`` in a subprocess and kill -9 it while its staging directory exists."""
    code = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from nessa.store.atomic import Staging
        with Staging({str(parent / "killed")!r}) as st:
            st.path().mkdir(parents=True, exist_ok=True)
            (st.path() / "partial.bin").write_bytes(b"x" * 4096)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    staged = [p for p in parent.iterdir() if STAGING_PATTERN.match(p.name)]
    assert staged, "the killed ingest left no staging directory"
    return staged[0]


def test_faults_are_data_loss_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    x = np.random.default_rng(4).random((60, 16), dtype=np.float32)
    for name in ("flipped", "truncated", "removed", "sound"):
        ingest_arrays(x, np.arange(60) % 3, tmp_path / name, shards=2)
    _flip_in_value(tmp_path / "flipped" / "shards" / "00001" / "data.mdb", x[45].tobytes())
    data = tmp_path / "truncated" / "shards" / "00000" / "data.mdb"
    data.write_bytes(data.read_bytes()[:5000])
    shutil.rmtree(tmp_path / "removed" / "shards" / "00001")
    staged = _kill_an_ingest(tmp_path)
    with running(tmp_path, warmup=False) as d:
        assert not staged.exists()  # the daemon recovered what the killed ingest left
        client = StorageClient(d.address)
        prober = Prober(d.address, tmp_path)
        prober.auth = ()
        cases = [
            ("flipped", [40, 45, 50], "sample 45"),
            ("truncated", [1, 2], "truncated"),
            ("removed", [1, 45], "shard directory is missing"),
        ]
        for name, indices, text in cases:
            request = pb.StreamRequest(dataset=name, indices=pb.IndexList(indices=indices)).SerializeToString()
            code, details = prober.call("StreamSamples", "us", request)
            TALLY[code.name] += 1
            assert code == grpc.StatusCode.DATA_LOSS, (name, details)
            assert text in details and str(tmp_path) not in details, details
        # A selection over the corrupt sample's data: never served as good.
        sel = client.select("flipped", "random", 1.0, seed=0)
        with pytest.raises(Exception, match="sample 45"):
            for _ in client.stream(sel):
                pass
        assert [b.indices.tolist() for b in client.stream([0, 59], dataset="sound")] == [[0, 59]]
        assert [i for b in client.stream(range(30), dataset="flipped") for i in b.indices.tolist()] == list(range(30))


# --- the slow part -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_more_generated_cases(setup: tuple[Prober, StorageClient, int, str], seed: int) -> None:
    prober, _client, good, selection = setup
    for case in garbage_cases(seed=seed, n=80):
        prober.check(*case)
    prober.alive(good)
    for i, case in enumerate(value_cases(seed=seed, n=80, selection=selection)):
        prober.check(*case)
        if i % 20 == 19:
            prober.alive(good)
    for case, chunks, allowed in proxy_cases(seed=seed):
        code = prober.check(case, "PushProxy", "su", chunks)
        assert code in allowed, (case, code)
        if code == "OK":
            good = _client.describe("toy").proxy_version or good
    prober.alive(good)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_load_8_streaming_clients_and_selections(tmp_path: Path) -> None:
    make_toy(tmp_path, n=6000, shards=2)
    # Warnings only: the daemon's stderr is a pipe nobody reads until the end (a full pipe would block it).
    serve = ServeProcess(tmp_path, extra=("--token-file", str(_token_file(tmp_path)), "--log-level", "warning"))
    try:
        serve.wait_serving()
        seconds = float(os.environ.get("NESSA_LOAD_SECONDS", "20"))
        setup_client = StorageClient(serve.target, token=TOKEN)
        sel = setup_client.select("toy", "random", 0.5, seed=0)
        rss0 = _rss_kib(serve.proc.pid)
        stop = time.monotonic() + seconds
        errors: list[str] = []
        counts = Counter[str]()

        def streamer(k: int) -> None:
            client = StorageClient(serve.target, token=TOKEN, stream_timeout=120, select_timeout=120)
            while time.monotonic() < stop:
                try:
                    got = sum(len(b.indices) for b in client.stream(sel, batch_size=64, shuffle_seed=k))
                    assert got == len(sel)
                    counts["streams"] += 1
                except Exception as exc:  # noqa: PERF203 - every error is reported
                    errors.append(f"stream: {exc!r}"[:300])

        def selector(k: int) -> None:
            client = StorageClient(serve.target, token=TOKEN, select_timeout=120)
            seed = k * 1000
            while time.monotonic() < stop:
                seed += 1
                try:
                    client.select("toy", "random", 0.1, seed=seed)
                    counts["selections"] += 1
                except Exception as exc:  # every error is reported
                    errors.append(f"select: {exc!r}"[:300])

        threads = [threading.Thread(target=streamer, args=(k,)) for k in range(8)]
        threads += [threading.Thread(target=selector, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 120)
        rss1 = _rss_kib(serve.proc.pid)
        print(
            f"\nload: {seconds:.0f} s, 8 streaming clients + 2 selecting: {counts['streams']} streams of "
            f"{len(sel)} samples, {counts['selections']} selections, {len(errors)} errors; daemon RSS "
            f"{rss0 / 1024:.1f} MiB -> {rss1 / 1024:.1f} MiB ({(rss1 - rss0) / 1024:+.1f} MiB)"
        )
        assert errors == []
        assert counts["streams"] >= 8 and counts["selections"] >= 2
    finally:
        serve.terminate()


def _token_file(root: Path) -> Path:
    path = root.parent / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path
