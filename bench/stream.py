"""Streaming throughput and bytes moved per epoch, on a synthetic CIFAR-shaped set (uint8 3x32x32).

Side by side in one run (each repeat runs every measurement once, in turn; medians of ``--repeats``):

- StreamSamples: a 10 % selection streamed from ``nessa serve`` (a subprocess) to a StorageClient in this process,
  1 MiB of payload per message (MB/s of sample payload, samples/s);
- bare gRPC: a minimal gRPC server (a subprocess) streaming pre-built 1 MiB ``bytes`` messages (no protobuf, no
  storage) to a raw-bytes client on the same loopback: the ceiling; the same number of bytes as the selection;
- raw read(): ``DatasetReader.read`` of the same samples in this process, in the stream's message-sized batches;
- 4 clients: four processes streaming the selection (different shuffle seeds) at once, started together; aggregate
  MB/s, beside four bare clients at once, and the same against a daemon with ``--workers N`` (stream worker
  processes sharing the port).

Then the bytes one epoch moves at fractions 1 %, 10 %, 30 %: the pushed proxy (ResNet-20, int8), the Select reply
(indices and weights) and the stream (payload and metadata), all as counted on the wire by the client, against a
full epoch's sample payload (the least a full-data epoch moves). Goal: at most (f + 0.01) x full.

Files are in the page cache (just written): this measures CPU per byte, not the disk. MB = 10^6 bytes.

Then a per-stage breakdown of the stream path (see :func:`profile_stages`) beside the bare transport: what each
stage costs alone, and what no stage accounts for (call setup, per-message Python in gRPC and the servicer, the
helper thread's hand-off).

Usage: ``python bench/stream.py [--samples N] [--repeats R] [--clients C] [--workers W] [--dir D]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import grpc
import numpy as np

MIB = 1 << 20
_BARE_METHOD = "/bench.Bare/Stream"


# --- the bare server (run as a subprocess: python bench/stream.py --bare-server) ----------------------------------


def bare_server() -> None:
    payload = os.urandom(MIB)

    def stream(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for _ in range(int(request.decode())):
            yield payload

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_send_message_length", 4 * MIB)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on ([\d.]+:\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"server did not start: {cmd} printed {line!r}")
    return proc, match.group(1)


# --- measurements -------------------------------------------------------------------------------------------------


def measure_stream(target: str, selection_id: str, seed: int) -> tuple[float, int, int]:
    from nessa.client import StorageClient

    client = StorageClient(target)
    client.describe("cifar")  # connect before the clock starts (the bare client waits for its channel too)
    t0 = time.perf_counter()
    n = payload = 0
    for batch in client.stream(selection_id, batch_size=4096, shuffle_seed=seed):
        n += len(batch)
        payload += batch.payload_bytes
    return time.perf_counter() - t0, payload, n


def measure_stream_at(target: str, selection_id: str, seed: int, start_at: float) -> tuple[float, float, int]:
    """For the concurrent run: (start, end, payload bytes) on a shared clock, starting at ``start_at``."""
    from nessa.client import StorageClient

    client = StorageClient(target)
    client.describe("cifar")  # connect before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    payload = sum(b.payload_bytes for b in client.stream(selection_id, batch_size=4096, shuffle_seed=seed))
    return t0, time.time(), payload


def measure_bare_at(target: str, nbytes: int, start_at: float) -> tuple[float, float, int]:
    """The bare stream for the concurrent run: (start, end, bytes)."""
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 4 * MIB)]) as ch:
        call = ch.unary_stream(_BARE_METHOD)
        grpc.channel_ready_future(ch).result(timeout=30)
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.time()
        got = sum(len(m) for m in call(str(max(1, round(nbytes / MIB))).encode(), timeout=600))
        return t0, time.time(), got


def concurrent(pool: ProcessPoolExecutor, fn, args: list[tuple], repeats: int) -> float:  # type: ignore[no-untyped-def, type-arg]
    """Median aggregate MB/s of ``fn(*a, start_at)`` for every ``a`` run at once, over ``repeats`` rounds."""
    out = []
    for _ in range(repeats):
        start_at = time.time() + 0.5  # every process connected and waiting: they start together
        spans = list(pool.map(fn, *zip(*args, strict=True), [start_at] * len(args)))
        out.append(sum(p for _, _, p in spans) / (max(e for _, e, _ in spans) - min(s for s, _, _ in spans)) / 1e6)
    return statistics.median(out)


def measure_bare(target: str, nbytes: int) -> tuple[float, int]:
    count = max(1, round(nbytes / MIB))
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 4 * MIB)]) as ch:
        call = ch.unary_stream(_BARE_METHOD)
        grpc.channel_ready_future(ch).result(timeout=30)
        t0 = time.perf_counter()
        got = sum(len(m) for m in call(str(count).encode(), timeout=600))
        return time.perf_counter() - t0, got


def measure_read(reader, indices: np.ndarray, per_message: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    total = 0
    for lo in range(0, len(indices), per_message):
        total += sum(len(v) for v in reader.read(indices[lo : lo + per_message]))
    return time.perf_counter() - t0, total


# --- per-stage profile (in this process, the same messages the stream sends) -------------------------------------


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def profile_stages(reader, indices: np.ndarray, per_message: int, repeats: int):  # type: ignore[no-untyped-def]
    """Seconds each stage of the stream path takes over the whole selection (medians of ``repeats``).

    The daemon's stages are run by hand on the messages it would send (same indices, same sizes), the way
    :meth:`DatasetReader.read_joined` runs them: locating each value in the LMDB map (slices of the map, after the
    first read of a shard has located its values), the per-sample checksums (the first touch of the bytes), encoding
    the message head (:func:`nessa.packed.encode_head`), and the one copy that joins head and values into the
    message; then the client's :func:`nessa.packed.decode_sample_batch` and what it copies (the small arrays; the
    samples are viewed). For comparison, the LMDB lookup the map replaces (``getmulti``, ``buffers=True``).
    """
    import nessa.store.checksum as checksum
    from nessa.packed import decode_sample_batch, encode_head
    from nessa.store.manifest import encode_keys

    chunks = [indices[lo : lo + per_message] for lo in range(0, len(indices), per_message)]
    shard_of = np.searchsorted(reader._starts, indices, side="right") - 1
    groups = []  # per message: (environment, sorted keys) for each shard it touches, as DatasetReader.read does
    for lo in range(0, len(indices), per_message):
        c, s = indices[lo : lo + per_message], shard_of[lo : lo + per_message]
        groups.append([(reader._env(int(sh)), encode_keys(np.unique(c[s == sh]))) for sh in np.unique(s)])
    labels, sizes = reader.labels, reader.sizes

    def lmdb_read() -> None:
        for g in groups:
            for env, k in g:
                with env.begin(buffers=True) as txn:
                    txn.cursor().getmulti(k)

    reader.read_joined(indices[:1])  # locate the values of every shard in the map (as the daemon's first read does)
    reader.read_joined(indices[-1:])
    mapped = [reader._mapped_values(c) for c in chunks]

    def located() -> None:
        for c in chunks:
            reader._mapped_values(c)

    def checksums() -> None:
        for v in mapped:
            checksum.checksums(v, len(v))

    def head(c: np.ndarray) -> bytes:
        return encode_head(c, labels[c], np.ones(len(c), np.float32), sizes[c], cursor="0123456789abcdef.1000",
                           position=1000, total=5000)  # fmt: skip

    heads = [head(c) for c in chunks]

    def encode() -> None:
        for c in chunks:
            head(c)

    def joined() -> None:
        for c, h in zip(chunks, heads, strict=True):
            reader.read_joined(c, h)

    messages = [reader.read_joined(c, h) for c, h in zip(chunks, heads, strict=True)]

    def decode() -> None:
        for data in messages:
            decode_sample_batch(data)

    parsed = [decode_sample_batch(d) for d in messages]

    def copies() -> None:
        for msg in parsed:
            msg.indices.copy(), msg.labels.copy(), msg.weights.copy()
            msg.samples.as_array(np.uint8, (3, 32, 32))

    t_located, t_sum = _time(located, repeats), _time(checksums, repeats)
    return [
        ("daemon: locate the values (slices of the LMDB map)", max(0.0, t_located - t_sum)),
        ("daemon: per-sample checksums (xxh3; first touch of the bytes)", t_sum),
        ("daemon: message head (packed arrays, protobuf)", _time(encode, repeats)),
        ("daemon: the one copy, values into the message", max(0.0, _time(joined, repeats) - t_located)),
        ("client: decode_sample_batch (views)", _time(decode, repeats)),
        ("client: arrays copied out, samples viewed", _time(copies, repeats)),
    ], _time(lmdb_read, repeats)


def epoch_bytes(target: str, proxy: bytes, fraction: float, epoch: int) -> dict[str, int]:
    from nessa.client import StorageClient

    client = StorageClient(target)
    client.push_proxy(proxy, "cifar")
    sel = client.select("cifar", "balanced", fraction, seed=epoch)
    payload = metadata = 0
    for batch in client.stream(sel, shuffle_seed=epoch):
        payload += batch.payload_bytes
        metadata += batch.metadata_bytes
    return {
        "proxy": client.bytes_sent["proxy"],
        "select": sel.metadata_bytes,
        "payload": payload,
        "metadata": metadata,
        "total": client.bytes_sent["proxy"] + client.bytes_received["samples"] + client.bytes_received["metadata"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes (default 4)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="also measure a daemon with --workers N (default min(4, cores); 1 skips it)")  # fmt: skip
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server()
        return

    import torch

    from nessa.client import StorageClient
    from nessa.proxy import Normalization, dumps, export
    from nessa.store import ingest_arrays, open_dataset, synthetic_arrays
    from nessa.trainer.models import resnet20

    work = args.dir or Path(tempfile.mkdtemp(prefix="nessa-bench-stream-"))
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "cifar" / "manifest.json").exists():
        x, y = synthetic_arrays(args.samples, seed=0)
        ingest_arrays(x, y, data_dir / "cifar", shards=2)
        del x
    nessa = Path(sys.executable).with_name("nessa")
    daemon, target = start(
        [str(nessa), "serve", "--data-dir", str(data_dir), "--port", "0", "--metrics-port", "-1",
         "--state-dir", str(work / "state"), "--log-level", "warning"]
    )  # fmt: skip
    bare, bare_target = start([sys.executable, __file__, "--bare-server"])
    workers_daemon, workers_target = None, None
    if args.workers > 1:
        workers_daemon, workers_target = start(
            [str(nessa), "serve", "--data-dir", str(data_dir), "--port", "0", "--metrics-port", "-1",
             "--state-dir", str(work / "state-workers"), "--log-level", "warning", "--no-warmup",
             "--workers", str(args.workers)]
        )  # fmt: skip
    try:
        client = StorageClient(target)
        info = client.describe("cifar")
        sel = client.select("cifar", "random", 0.1, seed=1)
        per_message = MIB // (info.total_bytes // info.num_samples)
        reader = open_dataset(data_dir / "cifar")
        rows: dict[str, list[float]] = {"stream": [], "bare": [], "read": [], "stream_sps": []}
        for r in range(args.repeats):
            secs, payload, n = measure_stream(target, sel.id, seed=r)
            rows["stream"].append(payload / secs / 1e6)
            rows["stream_sps"].append(n / secs)
            secs, got = measure_bare(bare_target, payload)
            rows["bare"].append(got / secs / 1e6)
            secs, got = measure_read(reader, sel.indices, per_message)
            rows["read"].append(got / secs / 1e6)
        clients = args.clients
        with ProcessPoolExecutor(clients, mp_context=get_context("spawn")) as pool:
            streams = [(target, sel.id, 100 + i) for i in range(clients)]
            conc = concurrent(pool, measure_stream_at, streams, args.repeats)
            payload = sel.selected_bytes
            conc_bare = concurrent(pool, measure_bare_at, [(bare_target, payload)] * clients, args.repeats)
            conc_workers = one_workers = None
            if workers_target is not None:
                wsel = StorageClient(workers_target).select("cifar", "random", 0.1, seed=1)
                streams = [(workers_target, wsel.id, 100 + i) for i in range(clients)]
                concurrent(pool, measure_stream_at, streams, 1)  # warm-up: each process locates the values once
                conc_workers = concurrent(pool, measure_stream_at, streams, args.repeats)
                ones = []  # one client, measured as the one-process daemon's (in this process)
                for r in range(args.repeats):
                    secs, got, _n = measure_stream(workers_target, wsel.id, seed=r)
                    ones.append(got / secs / 1e6)
                one_workers = statistics.median(ones)

        med = {k: statistics.median(v) for k, v in rows.items()}
        stages, lookup = profile_stages(reader, sel.indices, per_message, args.repeats)
        print(
            f"# StreamSamples throughput: {info.num_samples} CIFAR-shaped samples ({info.total_bytes / 1e6:.0f} MB), "
            f"10 % selection ({len(sel)} samples, {sel.selected_bytes / 1e6:.1f} MB), medians of {args.repeats}"
        )
        print()
        print("| path | MB/s | samples/s | vs bare gRPC |")
        print("| --- | ---: | ---: | ---: |")
        sample_bytes = info.total_bytes / info.num_samples
        print(f"| StreamSamples (daemon -> StorageClient) | {med['stream']:.0f} | {med['stream_sps']:.0f} | "
              f"{med['stream'] / med['bare']:.2f}x |")  # fmt: skip
        bare_sps = med["bare"] * 1e6 / sample_bytes
        print(f"| bare gRPC, 1 MiB bytes messages (ceiling) | {med['bare']:.0f} | {bare_sps:.0f} | 1.00x |")
        print(f"| raw read() from the store, in-process | {med['read']:.0f} | {med['read'] * 1e6 / sample_bytes:.0f} | "
              f"{med['read'] / med['bare']:.2f}x |")  # fmt: skip

        def row(name: str, mbs: float) -> None:
            print(f"| {name} | {mbs:.0f} | {mbs * 1e6 / sample_bytes:.0f} | {mbs / med['bare']:.2f}x |")

        row(f"bare gRPC, {clients} concurrent clients (aggregate)", conc_bare)
        row(f"StreamSamples, {clients} concurrent clients (aggregate), one process", conc)
        if conc_workers is not None and one_workers is not None:
            row(f"StreamSamples, 1 client, --workers {args.workers}", one_workers)
            row(f"StreamSamples, {clients} concurrent clients (aggregate), --workers {args.workers}", conc_workers)
        print()
        print(f"goal: StreamSamples >= 0.7x bare gRPC: {'met' if med['stream'] >= 0.7 * med['bare'] else 'NOT met'} "
              f"({med['stream'] / med['bare']:.2f}x); {clients} clients >= 1 client: "
              f"{'met' if max(conc, conc_workers or 0) >= med['stream'] else 'NOT met'} "
              f"({max(conc, conc_workers or 0) / med['stream']:.2f}x of one; {os.cpu_count()} cores here)")  # fmt: skip

        print()
        payload_mb = sel.selected_bytes / 1e6
        print(f"# Where the time goes: each stage over the same {payload_mb:.1f} MB selection, in this process "
              f"(medians of {args.repeats}); the transport from the bare gRPC run")  # fmt: skip
        print()
        print("| stage | ms | us per MiB | MB/s alone | share |")
        print("| --- | ---: | ---: | ---: | ---: |")
        transport = payload_mb / med["bare"]
        rows_s = [*stages, ("gRPC transport (bare stream of the same bytes)", transport)]
        whole = sum(t for _, t in rows_s)
        for name, secs in rows_s:
            print(f"| {name} | {secs * 1e3:.1f} | {secs / payload_mb * 1e6 * MIB / 1e6:.0f} | "
                  f"{payload_mb / max(secs, 1e-9):.0f} | {secs / whole:.0%} |")  # fmt: skip
        print(f"| sum of stages (if nothing overlapped) | {whole * 1e3:.1f} | {whole / payload_mb * MIB:.0f} | "
              f"{payload_mb / whole:.0f} | 100% |")  # fmt: skip
        rest = payload_mb / med["stream"] - whole
        print(f"| not in any stage (call setup, per-message Python in gRPC and the servicer, threads) | "
              f"{rest * 1e3:.1f} | {rest / payload_mb * MIB:.0f} | | |")  # fmt: skip
        print(f"| for comparison: LMDB lookup the map replaces (getmulti, buffers=True) | {lookup * 1e3:.1f} | "
              f"{lookup / payload_mb * MIB:.0f} | {payload_mb / max(lookup, 1e-9):.0f} | |")  # fmt: skip
        print(f"| measured StreamSamples, end to end | {payload_mb / med['stream'] * 1e3:.1f} | "
              f"{MIB / med['stream']:.0f} | {med['stream']:.0f} | |")  # fmt: skip

        torch.manual_seed(0)
        norm = Normalization(dtype="uint8", scale=1 / 255)
        proxy = dumps(
            export(resnet20().eval(), torch.zeros(1, 3, 32, 32), quantize="int8", version=1, normalization=norm)
        )
        full = info.total_bytes
        print()
        print(f"# Bytes moved per epoch (proxy ResNet-20 int8 = {len(proxy) / 1e6:.2f} MB pushed every epoch; "
              f"full epoch = {full / 1e6:.1f} MB of sample payload)")  # fmt: skip
        print()
        print("| fraction | proxy MB | Select reply MB | stream payload MB | stream metadata MB | total MB | "
              "total / full | goal (f + 0.01) |")  # fmt: skip
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for epoch, f in enumerate((0.01, 0.10, 0.30), start=1):
            b = epoch_bytes(target, proxy, f, epoch)
            ratio = b["total"] / full
            print(f"| {f:.0%} | {b['proxy'] / 1e6:.3f} | {b['select'] / 1e6:.3f} | {b['payload'] / 1e6:.2f} | "
                  f"{b['metadata'] / 1e6:.3f} | {b['total'] / 1e6:.2f} | {ratio:.4f} | "
                  f"{'<=' if ratio <= f + 0.01 else '>'} {f + 0.01:.2f} |")  # fmt: skip
    finally:
        daemon.terminate()
        bare.kill()
        daemon.wait(timeout=60)
        if workers_daemon is not None:
            workers_daemon.terminate()
            workers_daemon.wait(timeout=60)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
