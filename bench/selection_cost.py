"""Where one epoch's selection time goes, on both sides, against the trainer's epoch time (the demo's setting).

The demo's data (MNIST-1D, 40,000 train samples), its model (the 1-D CNN, trained one full epoch first so the proxy
is not a random one) and its placement (the daemon and the trainer pinned to disjoint halves of the CPUs when there
are two or more). For CRAIG (10 % of the set per epoch; lazy greedy, the code's default, and stochastic greedy
with ε = 0.1, the demo's) and CREST (one request: ``P = 5`` mini-batch coresets of
128), each repeat measures, in turn:

- trainer: proxy export (the live model → int8 bytes), push (PushProxy round trip), the Select round trip, and the
  start of the stream (first batch of the selection received);
- daemon (from the Select reply's timings): read + decode of the candidates, proxy forward (the engine's kernels and
  the gradient/loss/embedding head), selection (the selector: distances, greedy, weights); "reply" is the round
  trip less the daemon's own total (serialization, the wire, the client's decoding);
- the trainer's epoch: SGD over a 10 % selection (the work that pipelining can hide a selection behind).

Each figure is the median of ``--repeats``; shares are of the trainer's 10 % epoch time.

Usage: ``python bench/selection_cost.py [--samples 50000] [--repeats 3] [--engine opencl]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nessa.client import StorageClient
from nessa.pipeline import Decode, Rebatch, SelectionSource
from nessa.placement import format_cpus, place, split_cpus
from nessa.store import ingest
from nessa.trainer.batches import SampleDecoder
from nessa.trainer.demo import DATASET, DEFAULT_METHOD_OPTIONS, start_daemon
from nessa.trainer.models import cnn1d
from nessa.trainer.selecting import ProxyExporter

BATCH = 128


def _train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list) -> float:
    t0 = time.perf_counter()
    model.train()
    for b in batches:
        loss = (F.cross_entropy(model(b.x), b.y, reduction="none") * b.w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default="opencl")
    args = ap.parse_args()

    halves = split_cpus()
    daemon_cpus, trainer_cpus = (format_cpus(halves[0]), format_cpus(halves[1])) if halves else ("", "")
    print(f"placement: daemon CPUs {daemon_cpus or 'shared'}, trainer CPUs {trainer_cpus or 'shared'}")
    with tempfile.TemporaryDirectory(prefix="nessa-cost-") as tmp:
        root = Path(tmp)
        ingest("mnist1d", root / DATASET, num_samples=args.samples, seed=0, test_fraction=0.2)
        with start_daemon(root, engine=args.engine, cpus=daemon_cpus) as address:
            place(trainer_cpus)
            client = StorageClient(address)
            info = client.describe(DATASET)
            decoder = SampleDecoder(info, "cnn1d")
            torch.manual_seed(0)
            model = cnn1d(length=decoder.input_shape[0], num_classes=info.num_classes)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            everything = client.select(DATASET, "random", fraction=1.0, seed=0)
            source = SelectionSource(client, everything, shuffle_seed=1, message_size=BATCH)
            full = list(Decode(Rebatch(source, BATCH), decoder.batch))
            _train_epoch(model, opt, full)  # one epoch: a proxy of a partly trained model
            tenth = full[: len(full) // 10]
            export = ProxyExporter(model, decoder, "int8")
            export(0)  # the first export imports torch.fx: not a per-epoch cost
            rows: dict[str, dict[str, list[float]]] = {"craig": {}, "craig-stochastic": {}, "crest": {}}
            epoch_s: list[float] = []
            for rep in range(args.repeats):
                epoch_s.append(_train_epoch(model, opt, tenth))
                for method in rows:
                    r = rows[method]
                    t0 = time.perf_counter()
                    proxy = export(rep + 1)
                    t1 = time.perf_counter()
                    client.push_proxy(proxy, DATASET)
                    t2 = time.perf_counter()
                    budget = {"count": 5 * BATCH} if method == "crest" else {"fraction": 0.1}
                    opts = {"minibatch_size": BATCH} if method == "crest" else {}
                    if method == "craig-stochastic":  # the demo's CRAIG (DEFAULT_METHOD_OPTIONS)
                        opts = dict(DEFAULT_METHOD_OPTIONS["craig"])
                    name = method.split("-")[0]
                    sel = client.select(DATASET, name, seed=rep, proxy_version=rep + 1, options=opts, **budget)
                    t3 = time.perf_counter()
                    stream = client.stream(sel, batch_size=BATCH)
                    next(stream)
                    t4 = time.perf_counter()
                    stream.close()
                    tm = sel.timings
                    parts = {
                        "proxy export (trainer)": t1 - t0,
                        "proxy push (round trip)": t2 - t1,
                        "read + decode (daemon)": tm.read_seconds,
                        "proxy forward (daemon)": tm.proxy_forward_seconds,
                        "selection (daemon)": tm.selection_seconds,
                        "reply (wire + client)": (t3 - t2) - tm.total_seconds,
                        "stream start (first batch)": t4 - t3,
                        "total": t4 - t0,
                    }
                    for k, v in parts.items():
                        r.setdefault(k, []).append(v)
    epoch = statistics.median(epoch_s)
    print(f"\ntrainer epoch on 10 % ({len(tenth) * BATCH} samples, cnn1d): {epoch:.3f} s (median of {args.repeats})\n")
    print(
        "| stage | CRAIG (lazy) s | × epoch | CRAIG (stochastic, the demo's) s | × epoch | CREST s | × epoch |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for stage in rows["craig"]:
        cells = [statistics.median(rows[m][stage]) for m in rows]
        print(f"| {stage} | " + " | ".join(f"{c:.3f} | {c / epoch:.2f}×" for c in cells) + " |")
    print(
        "\nCREST's row is one reselection; it makes several per epoch (as its drift trigger fires), so its "
        "per-epoch selection cost is that many times the total."
    )
    _ = np  # numpy is imported for the data path's arrays


if __name__ == "__main__":
    main()
