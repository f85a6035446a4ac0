"""Facility-location selection: our engine (each greedy variant, each backend) against apricot, side by side.

Three tables, the first with the backends' agreement under it:

1. **FL vs apricot.** The same features (10 classes × 5,000, d = 10 and d = 512, Gaussian clusters per class),
   10 % per class (k = 500 per class), CRAIG's similarity (max distance − distance, per class). Apricot's
   ``FacilityLocationSelection(optimizer="lazy")`` gets that similarity matrix precomputed (numpy, float32; its time
   is included), so both optimize the identical function; apricot is warmed up first (numba compiles on its first
   call) and that compile is excluded. The objective of every selection is computed the same way (float64 numpy,
   Σ_i max_{j∈S} s_ij per class, summed). Columns: median seconds over ``--repeats`` runs, the ratio of apricot's
   seconds to ours, our objective over apricot's, and (``=numpy``) the share of an OpenCL variant's picks that the
   same variant on the numpy backend also picks. ``naive`` greedy runs on ``--naive-classes`` classes only and is
   scaled to 10 (it is O(n²k)). Under it, the backends' agreement where distances are hardest to get right: CRAIG,
   AdaCore and CREST on an *untrained* CNN's ``p − y`` over MNIST-1D (softmax ≈ uniform, so each class's rows lie
   within about 1e-2 of each other), OpenCL against numpy: overlap of picks and the two reported objectives.
2. **Scale.** 1,000,000 × 10 classes (100,000 per class, d = 10, 10 % → 10,000 per class) through GreeDi with
   ``block_size`` 10,000, in a subprocess; seconds and the child's peak RSS (``ru_maxrss``). ``--skip-million``.
3. **Methods.** Seconds per selection of every registered method on MNIST-1D gradients: a small torch 1-D CNN is
   trained briefly on ``mnist1d`` data here, then ``softmax(z) − onehot(y)``, per-sample losses and penultimate
   embeddings of the 4,000 training samples are the inputs (ClipCov's caption embeddings are a fixed random
   projection of the embeddings: MNIST-1D has no captions).

    python bench/selection.py [--repeats 3] [--skip-million] [--naive-classes 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nessa.selection.facility_location import maximize

CLASSES = 10
PER_CLASS = 5000
FRACTION = 0.1


def _features(d: int, seed: int = 0) -> list[np.ndarray]:
    """One (5000, d) block per class: a mixture of 20 Gaussian clusters with different spreads."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(CLASSES):
        centers = rng.standard_normal((20, d)) * 2.0
        which = rng.integers(0, 20, PER_CLASS)
        spread = rng.uniform(0.3, 1.0, 20)[which][:, None]
        blocks.append((centers[which] + spread * rng.standard_normal((PER_CLASS, d))).astype(np.float32))
    return blocks


def _craig_similarity(x: np.ndarray) -> np.ndarray:
    """CRAIG's per-class similarity max(d) − d, float32, as a user of apricot would compute it."""
    sq = (x * x).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d2, 0.0, out=d2)
    dist = np.sqrt(d2, out=d2)
    return np.subtract(dist.max(), dist, out=dist)


def _objective(x: np.ndarray, picks: np.ndarray) -> float:
    """F(S) = Σ_i max_{j∈S} (M − d_ij) in float64 with M the class block's max distance (computed in chunks)."""
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(axis=1)
    big = 0.0
    best = np.full(x.shape[0], np.inf)
    for start in range(0, x.shape[0], 1000):
        blk = x64[start : start + 1000]
        d = np.sqrt(np.maximum(sq[start : start + 1000, None] + sq[None, :] - 2 * blk @ x64.T, 0.0))
        big = max(big, float(d.max()))
        best[start : start + 1000] = d[:, picks].min(axis=1)
    return float((big - best).sum())


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def fl_rows(d: int, repeats: int, naive_classes: int) -> list[dict[str, Any]]:
    """Table 1 for one feature dimension."""
    from apricot import FacilityLocationSelection

    blocks = _features(d)
    k = round(FRACTION * PER_CLASS)
    FacilityLocationSelection(10, metric="precomputed", optimizer="lazy").fit(_craig_similarity(blocks[0][:300]))
    maximize(blocks[0][:300], 10)  # builds the OpenCL program (cached by PoCL afterwards)

    def apricot_all() -> list[np.ndarray]:
        out = []
        for x in blocks:
            sel = FacilityLocationSelection(k, metric="precomputed", optimizer="lazy").fit(_craig_similarity(x))
            out.append(np.asarray(sel.ranking, dtype=np.int64))
        return out

    def ours(optimizer: str, backend: str, classes: int) -> Callable[[], list[np.ndarray]]:
        return lambda: [maximize(x, k, optimizer=optimizer, backend=backend).indices for x in blocks[:classes]]

    variants: list[tuple[str, Callable[[], list[np.ndarray]], int]] = [("apricot lazy", apricot_all, CLASSES)]
    for backend in ("opencl", "numpy"):
        variants.extend(
            (f"ours {optimizer} [{backend}]", ours(optimizer, backend, CLASSES), CLASSES)
            for optimizer in ("lazy", "stochastic")
        )
        variants.append((f"ours naive [{backend}]", ours("naive", backend, naive_classes), naive_classes))
    measured = []
    chosen: dict[str, list[np.ndarray]] = {}
    for name, fn, classes in variants:
        seconds, picks = _median(fn, repeats if classes == CLASSES else 1)
        objective = sum(_objective(x, p) for x, p in zip(blocks, picks, strict=False))
        measured.append((name, seconds * CLASSES / classes, objective, classes))
        chosen[name] = picks
    ap_s, ap_obj = measured[0][1], measured[0][2]
    ap_obj_partial = {}
    rows = []
    for name, seconds, objective, classes in measured:
        if classes != CLASSES:  # compare the objective with apricot's on the same classes
            if classes not in ap_obj_partial:
                picks = apricot_all()
                ap_obj_partial[classes] = sum(_objective(x, p) for x, p in zip(blocks[:classes], picks, strict=False))
            ref_obj = ap_obj_partial[classes]
        else:
            ref_obj = ap_obj
        twin = chosen.get(name.replace("[opencl]", "[numpy]"))
        same = (
            sum(np.intersect1d(a, b).size for a, b in zip(chosen[name], twin, strict=False))
            / sum(b.size for b in twin[: len(chosen[name])])
            if twin is not None and "[opencl]" in name
            else float("nan")
        )
        rows.append({
            "d": d, "method": name, "seconds": seconds, "speedup_vs_apricot": ap_s / seconds,
            "objective": objective, "objective_vs_apricot": objective / ref_obj, "same_as_numpy": same,
            "note": "" if classes == CLASSES else f"{classes} class(es), time x{CLASSES // classes}",
        })  # fmt: skip
    return rows


def _million_child(block_size: int) -> None:
    n_per, d = 100_000, 10
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    total = 0
    modes = set()
    for _ in range(CLASSES):
        centers = rng.standard_normal((50, d)) * 2.0
        x = (centers[rng.integers(0, 50, n_per)] + rng.standard_normal((n_per, d))).astype(np.float32)
        res = maximize(x, round(FRACTION * n_per), block_size=block_size)
        total += len(res.indices)
        modes.add(res.stats["mode"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak, "selected": total, "modes": sorted(modes)}))


def million_row(block_size: int = 10_000) -> dict[str, Any]:
    """Table 2: run the 1M × 10-class selection in a subprocess, return its seconds and peak RSS."""
    proc = subprocess.run(
        [sys.executable, __file__, "--million-child", "--block-size", str(block_size)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _cnn1d() -> tuple[Any, Any]:
    """The small 1-D CNN over MNIST-1D's 40-step signals (64-d penultimate features) and its linear head."""
    import torch

    torch.manual_seed(0)
    body = torch.nn.Sequential(  # a small 1-D CNN over the 40-step signals, 64-d penultimate features
        torch.nn.Unflatten(1, (1, 40)),
        torch.nn.Conv1d(1, 16, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv1d(16, 32, 5, stride=2, padding=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 20, 64),
        torch.nn.ReLU(),
    )
    return body, torch.nn.Linear(64, 10)


def _mnist1d() -> tuple[Any, Any]:
    import torch
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.int64)


def agreement_rows() -> list[dict[str, Any]]:
    """Table 4: OpenCL against numpy picks on an *untrained* CNN's ``p − y`` (softmax ≈ uniform: rows cluster tightly).

    For every method that takes distances, the same selection (10 %, seed 0) on both backends: the share of the
    OpenCL picks that numpy also picks, and the relative difference of the two reported objectives.
    """
    import torch

    from nessa.selection import SelectionInputs, create

    x, y = _mnist1d()
    body, head = _cnn1d()
    with torch.no_grad():
        p = torch.softmax(head(body(x)), dim=1)
        grads = (p - torch.nn.functional.one_hot(y, 10)).numpy().astype(np.float32)
    inputs = SelectionInputs(labels=y.numpy(), gradients=grads)
    labels = y.numpy()
    within = []
    for c in range(10):
        g = grads[labels == c].astype(np.float64)
        d = np.sqrt(np.maximum(((g[:, None, :] - g[None, :, :]) ** 2).sum(-1), 0.0))
        within.append(d[np.triu_indices(len(g), 1)])
    median_dist = float(np.median(np.concatenate(within)))
    out = []
    for name in ("craig", "adacore", "crest"):
        a = create(name, backend="opencl").select(inputs, FRACTION, seed=0)
        b = create(name, backend="numpy").select(inputs, FRACTION, seed=0)
        common = np.intersect1d(a.indices, b.indices).size
        out.append({
            "method": name, "overlap": common / max(len(b.indices), 1), "objective_opencl": a.objective,
            "objective_numpy": b.objective, "objective_rel_diff": abs(a.objective - b.objective) / abs(b.objective),
            "median_within_class_distance": median_dist,
        })  # fmt: skip
    return out


def method_rows(repeats: int) -> list[dict[str, Any]]:
    """Table 3: seconds per selection of every registered method on MNIST-1D last-layer gradients."""
    import torch

    from nessa.selection import SelectionInputs, available, create

    x, y = _mnist1d()
    body, head = _cnn1d()
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(30):  # brief full-batch training: a partly trained model, as mid-training selection sees it
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(body(x)), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        emb = body(x)
        logits = head(emb)
        p = torch.softmax(logits, dim=1)
        grads = (p - torch.nn.functional.one_hot(y, 10)).numpy().astype(np.float32)
        losses = torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy()
    emb_np = emb.numpy().astype(np.float32)
    captions = (emb_np @ np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32)
    inputs = SelectionInputs(labels=y.numpy(), gradients=grads, losses=losses, embeddings=emb_np,
                             caption_embeddings=captions, groups=y.numpy())  # fmt: skip
    out = []
    for name in sorted(available()):
        selector = create(name)
        selector.select(inputs, FRACTION, seed=0)  # warm-up
        seconds, subset = _median(lambda s=selector: s.select(inputs, FRACTION, seed=0), repeats)
        out.append({"method": name, "seconds": seconds, "selected": len(subset), "objective": subset.objective,
                    "proxy_train_accuracy": float((logits.argmax(1) == y).float().mean())})  # fmt: skip
    return out


def main() -> None:
    """Run the three tables and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-classes", type=int, default=1)
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--million-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--block-size", type=int, default=10_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.million_child:
        _million_child(args.block_size)
        return
    from nessa.accel import get_runtime

    print(f"device: {get_runtime().name}\n")
    print(f"1. facility location, {CLASSES} classes x {PER_CLASS}, {FRACTION:.0%} per class, CRAIG similarity")
    header = (f"{'d':>4} {'method':<28} {'seconds':>9} {'vs apricot':>11} {'objective':>14} {'obj/apricot':>12} "
              f"{'=numpy':>7}  note")  # fmt: skip
    print(header)
    print("-" * len(header))
    for d in (10, 512):
        for r in fl_rows(d, args.repeats, args.naive_classes):
            same = "" if np.isnan(r["same_as_numpy"]) else f"{r['same_as_numpy']:.1%}"
            print(f"{r['d']:>4} {r['method']:<28} {r['seconds']:>9.3f} {r['speedup_vs_apricot']:>10.1f}x "
                  f"{r['objective']:>14.1f} {r['objective_vs_apricot']:>12.5f} {same:>7}  {r['note']}")  # fmt: skip
    agree = agreement_rows()
    print(f"\n   backend agreement on an untrained CNN's p - y over MNIST-1D (4,000 samples, 10%, seed 0; median "
          f"within-class distance {agree[0]['median_within_class_distance']:.2e}): OpenCL picks also picked by numpy, "
          "objectives")  # fmt: skip
    header = f"   {'method':<10} {'overlap':>8} {'objective opencl':>18} {'objective numpy':>18} {'rel. diff':>10}"
    print(header)
    print("   " + "-" * (len(header) - 3))
    for r in agree:
        print(f"   {r['method']:<10} {r['overlap']:>8.1%} {r['objective_opencl']:>18.8g} {r['objective_numpy']:>18.8g} "
              f"{r['objective_rel_diff']:>10.1e}")  # fmt: skip
    if not args.skip_million:
        print("\n2. scale: 1,000,000 x 10 classes (d=10, 10% per class, GreeDi block 10,000), subprocess")
        r = million_row()
        print(f"   seconds {r['seconds']:.1f}   peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB   "
              f"selected {r['selected']}   mode {','.join(r['modes'])}")  # fmt: skip
    methods = method_rows(args.repeats)
    print(f"\n3. every registered method on MNIST-1D gradients (4,000 samples, 10%; CNN briefly trained, "
          f"train accuracy {methods[0]['proxy_train_accuracy']:.0%})")  # fmt: skip
    header = f"{'method':<10} {'seconds':>9} {'selected':>9} {'objective':>14}"
    print(header)
    print("-" * len(header))
    for r in methods:
        print(f"{r['method']:<10} {r['seconds']:>9.4f} {r['selected']:>9} {r['objective']:>14.4g}")


if __name__ == "__main__":
    main()
