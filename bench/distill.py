"""Dataset distillation on MNIST-1D as the PDD paper evaluates it: fresh networks trained on the synthetic set.

For each IPC (synthetic samples per class in total), every method's set is evaluated by training fresh
ConvNet-1Ds (instance norm) on it and testing on the real test split; accuracies are the median (min–max) over
``--nets`` networks (different inits) or, for random real subsets, over ``--draws`` subsets × ``--nets``:

- ``pdd``: PDD over MTT, P stages of IPC/P per class, trained progressively (stage i's union with its lr);
- ``mtt``: single-stage MTT with the same total matching iterations as PDD (the compute-matched control);
- ``dm``: distribution matching;
- ``random``: a class-balanced random real subset of the same size.

Ablations (PDD Tables 3–4): PDD's stages trained all at once (``union``, the last stage's lr) or one after another
(``sequential``), and PDD distilled without conditioning on the earlier stages. Cross-architecture: the same sets
trained on the trainer's BatchNorm ``cnn1d``. Systems: the bytes one epoch streams (stage unions vs the full set)
and each distillation's one-off seconds.

Usage: ``python bench/distill.py --quick`` (about a minute and a half here), or ``python bench/distill.py``
(the design note's setting: 8 experts, 300 iterations per stage, IPC 10 and 50; long on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from nessa.distill import ConvNetSpec, DistillResult, distill, train_stages
from nessa.store.sources import mnist1d_splits
from nessa.trainer.models import cnn1d

SAMPLE_BYTES = 40 * 4


def _arrays(split) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    return np.stack([np.frombuffer(bytes(v), np.float32) for v in split.values]), np.asarray(split.labels)


def _fmt(accs: list[float]) -> str:
    return f"{100 * statistics.median(accs):5.1f} ({100 * min(accs):.1f}–{100 * max(accs):.1f})"


def _stages(res: DistillResult) -> list[tuple[np.ndarray, np.ndarray, float]]:
    return [(s.x, s.y, s.lr) for s in res.stages]


def _eval(spec, stages, xte, yte, epochs, nets, schedule="progressive") -> list[float]:  # type: ignore[no-untyped-def]
    return [
        train_stages(spec, stages, xte, yte, epochs=epochs, seed=100 + s, schedule=schedule)[-1] for s in range(nets)
    ]


def _eval_bn(stages, xte, yte, epochs, nets) -> list[float]:  # type: ignore[no-untyped-def]
    """Progressive training of the trainer's BatchNorm cnn1d (cross-architecture check)."""
    out = []
    xt, yt = torch.from_numpy(xte), torch.from_numpy(yte)
    for s in range(nets):
        torch.manual_seed(100 + s)
        model = cnn1d()
        opt = torch.optim.SGD(model.parameters(), lr=stages[0][2], momentum=0.9, weight_decay=5e-4)
        for i, (_, _, lr) in enumerate(stages):
            x = torch.from_numpy(np.concatenate([st[0] for st in stages[: i + 1]]))
            y = torch.from_numpy(np.concatenate([st[1] for st in stages[: i + 1]]))
            for e in range(epochs):
                for g in opt.param_groups:
                    g["lr"] = lr * (0.1 if e >= epochs // 2 + 1 else 1.0)
                model.train()
                for idx in torch.randperm(len(y)).split(256):
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        model.eval()
        with torch.no_grad():
            out.append(float((model(xt).argmax(1) == yt).float().mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small setting for CI (about a minute and a half here)")
    ap.add_argument(
        "--samples", type=int, default=None, help="MNIST-1D samples, 80 %% train (default 8000; quick 2000)"
    )
    ap.add_argument("--ipc", type=int, nargs="+", default=None, help="total IPCs (default 10 50; quick 10)")
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--draws", type=int, default=None, help="random subsets (default 5; quick 3)")
    ap.add_argument("--nets", type=int, default=None, help="networks per set (default 3; quick 2)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per training phase (default 300; quick 150)")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="distillation option")
    ap.add_argument("--methods", default="pdd,mtt,dm", help="which distillations to run (default pdd,mtt,dm)")
    args = ap.parse_args()
    q = args.quick
    n = args.samples or (2000 if q else 8000)
    ipcs = args.ipc or ([10] if q else [10, 50])
    draws, nets = args.draws or (3 if q else 5), args.nets or (2 if q else 3)
    epochs = args.epochs or (150 if q else 300)
    base: dict[str, object] = (
        {"num_experts": 2, "iterations": 15, "syn_steps": 10, "transition_epochs": 50, "dm_iterations": 100}
        if q
        else {"num_experts": 8, "iterations": 300, "syn_steps": 20, "transition_epochs": 300, "dm_iterations": 1000}
    )
    for item in args.option:
        key, _, value = item.partition("=")
        base[key] = value
    torch.set_num_threads(1)
    train, test = mnist1d_splits(n, seed=args.seed)
    x, y = _arrays(train)
    xte, yte = _arrays(test)
    spec = ConvNetSpec(length=40, num_classes=10)
    print(f"MNIST-1D {len(y)} train / {len(yte)} test; options {base}; {nets} nets × {epochs} epochs per phase")
    rows: list[tuple[str, int, str, str, float]] = []
    for ipc in ipcs:
        p = args.stages
        runs: dict[str, tuple[DistillResult, float]] = {}
        for name, method, st, extra in (
            ("pdd", "pdd", p, {}),
            ("mtt", "mtt", 1, {"iterations": int(str(base["iterations"])) * p}),
            ("dm", "dm", 1, {}),
            *((("pdd-no-cond", "pdd", p, {"conditioning": False}),) if not args.no_ablations else ()),
        ):
            if name.split("-")[0] not in args.methods.split(","):
                continue
            t0 = time.perf_counter()
            res = distill(x, y, method=method, ipc=ipc, stages=st, seed=args.seed, options={**base, **extra})
            runs[name] = (res, time.perf_counter() - t0)
        for name, (res, secs) in runs.items():
            lrs = "/".join(f"{s.lr:.3g}" for s in res.stages)
            rows.append((f"{name} (progressive)" if res.method == "pdd" else name, ipc,
                         _fmt(_eval(spec, _stages(res), xte, yte, epochs, nets)), lrs, secs))  # fmt: skip
        rng = np.random.default_rng(args.seed)
        rand_accs: list[float] = []
        lr0 = float(str(base.get("lr_syn_init", 0.05)))
        for _ in range(draws):
            idx = np.concatenate([rng.choice(np.nonzero(y == c)[0], ipc, replace=False) for c in range(10)])
            rand_accs += _eval(spec, [(x[idx], y[idx], lr0)], xte, yte, epochs, nets)
        rows.append(("random real", ipc, _fmt(rand_accs), f"{lr0:.3g}", 0.0))
        if not args.no_ablations and "pdd" in runs:
            pdd = _stages(runs["pdd"][0])
            for sched in ("union", "sequential"):
                # union trains once, as long as the P phases together
                phase = epochs * (p if sched == "union" else 1)
                rows.append((f"pdd ({sched})", ipc, _fmt(_eval(spec, pdd, xte, yte, phase, nets, sched)), "", 0.0))
            rows.append(("pdd → cnn1d (BN)", ipc, _fmt(_eval_bn(pdd, xte, yte, epochs, nets)), "", 0.0))
            if "mtt" in runs:
                mtt = _stages(runs["mtt"][0])
                rows.append(("mtt → cnn1d (BN)", ipc, _fmt(_eval_bn(mtt, xte, yte, epochs, nets)), "", 0.0))
        full = len(y) * SAMPLE_BYTES
        per_stage = [10 * (ipc // p) * (i + 1) * SAMPLE_BYTES for i in range(p)]
        print(
            f"IPC {ipc}: bytes one epoch streams: stage unions {per_stage} vs full data {full} "
            f"({full / per_stage[-1]:.0f}x more); distillation read {full} real bytes on the storage side once"
        )
    print()
    print(f"{'method':<24} {'IPC':>4}  {'test acc % median (min–max)':<28} {'learned lr':<34} {'distill s':>9}")
    for name, ipc, acc, lrs, secs in rows:
        print(f"{name:<24} {ipc:>4}  {acc:<28} {lrs:<34} {secs:9.1f}")


if __name__ == "__main__":
    main()
