"""Full vs 10 % epochs through an emulated storage link: where bytes turn into time.

A real daemon (``nessa serve --link-rate RATE``, a subprocess) serves a synthetic CIFAR-shaped set (uint8 3x32x32,
10 classes); this process trains ResNet-20 on it through the trainer's data path (SelectionSource -> Rebatch ->
decode -> Prefetch) for one full epoch and one 10 % epoch (a ``random`` selection: no selection cost, so the table
shows the link and nothing else), at each link rate. Beside ResNet-20, the same epochs with no model (the data
path alone: an accelerator faster than the link) show the I/O-bound regime this CPU cannot reach by training.

Columns (medians of ``--repeats`` epochs, each from the same initial model): epoch seconds (wall, first batch
requested to last batch trained), samples, MB that crossed the link (as the client counts them), data wait (seconds
the training loop was blocked on data, and its share of the epoch), and what the link alone needs for those bytes
(MB / rate). The link is an emulation (see ``docs/streaming.md``).

Usage: ``python bench/link.py [--samples N] [--rates 1Gbit,10Gbit] [--fraction 0.1] [--repeats R] [--quick]``
(``--rates 100Mbit,1Gbit,10Gbit`` adds a link slow enough to bind even this CPU's training.)
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Row:
    rate: str
    workload: str
    model: str
    seconds: float
    samples: int
    megabytes: float
    wait: float
    link_seconds: float


def start_daemon(data_dir: Path, state: Path, rate: str) -> tuple[subprocess.Popen, str]:
    nessa = Path(sys.executable).with_name("nessa")
    cmd = [str(nessa), "serve", "--data-dir", str(data_dir), "--port", "0", "--metrics-port", "-1",
           "--state-dir", str(state), "--log-level", "warning", "--no-warmup", "--link-rate", rate]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on ([\d.]+:\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"nessa serve did not start: {line!r}")
    return proc, match.group(1)


def run_epoch(client, selection, decoder, model, batch_size: int, seed: int) -> tuple[float, int, int, float]:  # type: ignore[no-untyped-def]
    """One epoch: (seconds, samples, bytes received, data wait seconds)."""
    import torch

    from nessa.pipeline import Decode, Prefetch, Rebatch, SelectionSource

    before = client.bytes_received["samples"] + client.bytes_received["metadata"]
    source = SelectionSource(client, selection, shuffle_seed=seed, message_size=4096)
    chain = Prefetch(Decode(Rebatch(source, batch_size), decoder.batch), depth=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if model is not None else None
    n, wait = 0, 0.0
    t0 = time.perf_counter()
    try:
        for batch in chain:
            wait += chain.last_wait
            n += len(batch.y)
            if model is not None and opt is not None:
                opt.zero_grad(set_to_none=True)
                loss = (torch.nn.functional.cross_entropy(model(batch.x), batch.y, reduction="none") * batch.w).mean()
                loss.backward()
                opt.step()
    finally:
        chain.close()
    secs = time.perf_counter() - t0
    moved = client.bytes_received["samples"] + client.bytes_received["metadata"] - before
    return secs, n, moved, wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples in the synthetic set (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs measured per cell; medians (default 3)")
    parser.add_argument("--rates", default="1Gbit,10Gbit", help="link rates, comma-separated (default 1Gbit,10Gbit)")
    parser.add_argument("--fraction", type=float, default=0.1, help="the subset epoch's fraction (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="500 samples, one repeat (a smoke run)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 500, 1
    if args.samples < 100 or not 0 < args.fraction < 1 or args.repeats < 1:
        raise SystemExit("--samples must be >= 100, --fraction in (0, 1) and --repeats >= 1")

    import torch

    from nessa.client import StorageClient
    from nessa.services.storage.link import format_rate, parse_rate
    from nessa.store import ingest_arrays, synthetic_arrays
    from nessa.trainer.batches import SampleDecoder
    from nessa.trainer.models import resnet20

    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    for r in rates:
        parse_rate(r)  # a clear error before any work
    work = args.dir or Path(tempfile.mkdtemp(prefix="nessa-bench-link-"))
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "cifar" / "manifest.json").exists():
        x, y = synthetic_arrays(args.samples, seed=0)
        ingest_arrays(x, y, data_dir / "cifar", shards=2)
    rows: list[Row] = []
    warmed = False
    torch.set_flush_denormal(True)  # a diverging random-label run must not slow down on denormal floats
    try:
        for rate in rates:
            daemon, target = start_daemon(data_dir, work / f"state-{rate}", rate)
            try:
                client = StorageClient(target)
                info = client.describe("cifar")
                decoder = SampleDecoder(info, "resnet20")
                full = client.select("cifar", "random", 1.0, seed=0)
                part = client.select("cifar", "random", args.fraction, seed=0)
                bps = parse_rate(rate)
                for model_name in ("resnet20", "none (data path only)"):
                    for workload, sel in (("full", full), (f"{args.fraction:.0%}", part)):
                        torch.manual_seed(0)  # the same initial model for every epoch measured
                        model = resnet20(num_classes=info.num_classes).train() if model_name == "resnet20" else None
                        if model is not None and not warmed:  # first-call costs out of the table
                            run_epoch(client, part, decoder, model, args.batch_size, seed=99)
                            warmed = True
                            torch.manual_seed(0)
                            model = resnet20(num_classes=info.num_classes).train()
                        runs = []
                        for r in range(args.repeats):  # each from the same initial model
                            torch.manual_seed(0)
                            model = resnet20(num_classes=info.num_classes).train() if model is not None else None
                            runs.append(run_epoch(client, sel, decoder, model, args.batch_size, seed=1 + r))
                        secs = statistics.median(x[0] for x in runs)
                        wait = statistics.median(x[3] for x in runs)
                        n, moved = runs[0][1], runs[0][2]
                        rows.append(Row(rate, workload, model_name, secs, n, moved / 1e6, wait, moved / bps))
            finally:
                daemon.terminate()
                daemon.wait(timeout=60)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    mb = args.samples * 3072 / 1e6
    print(f"# Full vs {args.fraction:.0%} epochs through an emulated link: {args.samples} CIFAR-shaped samples "
          f"({mb:.1f} MB), batch {args.batch_size}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print()
    print("| link | epoch | model | epoch s | samples | MB moved | data wait s | wait share | link alone s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {format_rate(parse_rate(r.rate)).split(' (')[0]} | {r.workload} | {r.model} | {r.seconds:.2f} | "
              f"{r.samples} | {r.megabytes:.1f} | {r.wait:.2f} | {r.wait / max(r.seconds, 1e-9):.0%} | "
              f"{r.link_seconds:.3f} |")  # fmt: skip
    print()
    for rate in rates:
        by = {(r.workload, r.model): r for r in rows if r.rate == rate}
        f = f"{args.fraction:.0%}"
        t = by[("full", "resnet20")].seconds / max(by[(f, "resnet20")].seconds, 1e-9)
        d = by[("full", "none (data path only)")].seconds / max(by[(f, "none (data path only)")].seconds, 1e-9)
        print(
            f"{rate}: a {f} epoch is {t:.1f}x shorter than a full one training ResNet-20 here, {d:.1f}x on the "
            "data path alone"
        )


if __name__ == "__main__":
    main()
