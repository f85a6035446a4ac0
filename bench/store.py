"""Store throughput: ingest, sharded random reads through DatasetReader, and a raw one-environment LMDB baseline.

On a synthetic CIFAR-shaped set (uint8 3x32x32, 50,000 samples by default) in a temporary directory, prints
medians of ``--repeats`` runs, measured side by side (each repeat runs every measurement once, in turn):

- ingest: ``ingest_arrays`` of the in-memory arrays into ``--shards`` shards (generation not timed);
- read(): a random ``--fraction`` of the indices, in random order, in batches of ``--batch``, through
  ``open_dataset(...).read`` (the pass is repeated for at least 0.2 s and timed per pass);
- read() unverified: the same, on the same reader with its per-sample checksum check switched off (as a dataset
  written before checksums reads), side by side with read(), so the ratio is the cost of verifying every sample;
- raw LMDB: the same samples' bytes from a one-shard copy of the dataset, opened directly with py-lmdb
  (read-only, unlocked), one read transaction, one cursor, keys sorted, one ``getmulti`` call (timed the same
  way);
- verify: hashing every shard against the manifest.

Reads run with the files in the page cache (they were just written): this measures the store's CPU cost per
byte, not the disk. MB = 10^6 bytes.

Usage: ``python bench/store.py [--samples N] [--shards S] [--repeats R] [--batch B] [--fraction F] [--dir D]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np

from nessa.store import ingest_arrays, open_dataset, synthetic_arrays, verify
from nessa.store.manifest import encode_keys


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _per_pass(fn, min_seconds: float = 0.2) -> tuple[float, object]:
    """Seconds per call of ``fn``, repeating it for at least ``min_seconds`` (short passes are noisy)."""
    calls, start = 0, time.perf_counter()
    while True:
        result = fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    if args.repeats < 1 or args.samples < 1:
        parser.error("--repeats and --samples must be >= 1")

    work = Path(tempfile.mkdtemp(prefix="nessa-bench-store-", dir=args.dir))
    try:
        x, y = synthetic_arrays(args.samples, seed=args.seed)
        total_mb = x.nbytes / 1e6
        rng = np.random.default_rng(args.seed)
        k = max(1, round(args.samples * args.fraction))
        idx = rng.choice(args.samples, size=k, replace=False)
        read_mb = k * x[0].nbytes / 1e6
        batches = [idx[i : i + args.batch] for i in range(0, k, args.batch)]
        sorted_keys = encode_keys(np.sort(idx))

        (one,) = ingest_arrays(x, y, work / "one-shard", shards=1)
        raw_env = lmdb.open(str(one / "shards" / "00000"), readonly=True, lock=False, readahead=False)

        ingest_s, read_s, unverified_s, raw_s, verify_s = [], [], [], [], []
        for r in range(args.repeats):
            dest = work / f"ds{r}"
            t, _ = _timed(lambda dest=dest: ingest_arrays(x, y, dest, shards=args.shards))
            ingest_s.append(t)
            with open_dataset(dest) as ds:
                ds.read(idx[:1])  # open the shard environments outside the timing

                def read_all(ds=ds) -> int:
                    return sum(len(v) for b in batches for v in ds.read(b))

                t, got = _per_pass(read_all)
                read_s.append(t)
                if got != k * x[0].nbytes:
                    raise SystemExit(f"read() returned {got} bytes, expected {k * x[0].nbytes}")
                sums, ds._checksums = ds._checksums, None  # bench only: the reader without verification
                try:
                    t, got = _per_pass(read_all)
                finally:
                    ds._checksums = sums
                unverified_s.append(t)

            def raw_pass() -> int:
                with raw_env.begin(buffers=False) as txn:
                    return sum(len(v) for _k, v in txn.cursor().getmulti(sorted_keys))

            t, got = _per_pass(raw_pass)
            raw_s.append(t)
            if got != k * x[0].nbytes:
                raise SystemExit(f"raw pass returned {got} bytes, expected {k * x[0].nbytes}")
            t, _ = _timed(lambda dest=dest: verify(dest))
            verify_s.append(t)
            if r > 0:
                shutil.rmtree(work / f"ds{r - 1}")
        raw_env.close()

        med = statistics.median
        rows = [
            (f"ingest ({args.shards} shards)", med(ingest_s), args.samples, total_mb),
            (f"read() random {args.fraction:.0%}, batches of {args.batch}", med(read_s), k, read_mb),
            ("read() unverified (no checksum check)", med(unverified_s), k, read_mb),
            ("raw LMDB, 1 env, 1 sorted cursor pass", med(raw_s), k, read_mb),
            (f"verify ({args.shards} shards, sha256)", med(verify_s), args.samples, total_mb),
        ]
        print(
            f"NeSSA store: synthetic uint8 (3, 32, 32), {args.samples} samples ({total_mb:.1f} MB), "
            f"median of {args.repeats}, page cache warm"
        )
        print(f"{'operation':<42} {'median s':>9} {'samples/s':>11} {'MB/s':>9}")
        for name, seconds, n, mb in rows:
            print(f"{name:<42} {seconds:>9.3f} {n / seconds:>11.0f} {mb / seconds:>9.1f}")
        ratio = (read_mb / med(read_s)) / (read_mb / med(raw_s))
        print(f"{'read() / raw LMDB throughput':<42} {'':>9} {'':>11} {ratio:>9.2f}")
        verified = med(unverified_s) / med(read_s)
        print(f"{'read() / read() unverified throughput':<42} {'':>9} {'':>11} {verified:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
