"""Kernel benchmarks: proxy forward throughput, selection kernels vs numpy, and proxy size, in one run.

Usage: ``python bench/kernels.py [--repeats 5] [--batch-size 256] [--quick]``

Each section is a function returning a :class:`Table`; :data:`SECTIONS` lists them in print order, so a new set of
rows (e.g. the selection kernels of ``nessa.accel.selection_ops``) is one more function added to that list.
Timings are medians over ``--repeats`` runs; the contenders of one row group run interleaved (A, B, C, A, B, C, ...)
so that machine noise hits them alike, and ratios are taken between those medians.

Proxy forward contenders, per model:

* ``opencl``: ``ProxyEngine("opencl")`` on the int8 proxy (PoCL on this CPU): raw samples in (uint8 images cross to
  the device as bytes), normalization, every layer, the fused softmax/gradient/loss head, and the download of
  logits, gradient, loss and embedding;
* ``torch proxy``: ``ProxyEngine("torch")`` on the same int8 proxy (dequantized weights, same outputs);
* ``torch fp32 model``: the trained model itself, ``eval()`` under ``no_grad``, ``torch.set_num_threads(cores)``,
  fed already-normalized float32 batches (so it does less work than the proxies).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nessa.proxy import Normalization, ProxyEngine, dumps, export
from nessa.trainer.models import cnn1d, mlp, resnet20


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cols = [self.header, *self.rows]
        widths = [max(len(r[i]) for r in cols) for i in range(len(self.header))]
        line = "  ".join("-" * w for w in widths)
        out = [f"## {self.title}", "", "  ".join(h.ljust(w) for h, w in zip(self.header, widths, strict=True)), line]
        out += [
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in self.rows
        ]
        out += [f"  {n}" for n in self.notes]
        return "\n".join(out) + "\n"


@dataclass
class Config:
    repeats: int = 5
    batch_size: int = 256
    quick: bool = False


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, run interleaved after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _state_dict_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


# --- section: proxy forward throughput ----------------------------------------------------------------------------


def proxy_forward(cfg: Config) -> Table:
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    rng = np.random.default_rng(0)
    table = Table(
        "Proxy forward throughput (samples/s, median of runs)",
        ["model", "input", "samples", "opencl int8", "torch int8", "torch fp32 model", "opencl/fp32", "opencl/torch"],
    )
    cifar_norm = Normalization(mean=(0.491, 0.482, 0.447), std=(0.247, 0.243, 0.262), dtype="uint8", scale=1 / 255)
    cases = [
        ("resnet20", resnet20(), (3, 32, 32), cifar_norm, 512 if cfg.quick else 2048),
        ("cnn1d", cnn1d(), (40,), None, 4096 if cfg.quick else 16384),
    ]
    for name, model, shape, norm, n in cases:
        model.eval()
        y = rng.integers(0, 10, n)
        if norm is not None:
            raw = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            mean = torch.tensor(norm.mean).reshape(1, -1, 1, 1)
            std = torch.tensor(norm.std).reshape(1, -1, 1, 1)
            model_in = ((torch.from_numpy(raw).float() * norm.scale - mean) / std).contiguous()
            label = "uint8 CIFAR-shaped"
        else:
            raw = rng.standard_normal((n, *shape)).astype(np.float32)
            model_in = torch.from_numpy(raw)
            label = "float32 MNIST-1D-shaped"
        proxy = export(model, model_in[:1], version=0, normalization=norm)
        engines = {b: ProxyEngine(b, batch_size=cfg.batch_size) for b in ("opencl", "torch")}

        def fp32_model(model: torch.nn.Module = model, x: torch.Tensor = model_in) -> None:
            with torch.no_grad():
                for lo in range(0, x.shape[0], cfg.batch_size):
                    model(x[lo : lo + cfg.batch_size])

        med = interleaved_medians(
            {
                "opencl": lambda e=engines["opencl"], p=proxy, r=raw, yy=y: e.run(p, r, yy),
                "torch": lambda e=engines["torch"], p=proxy, r=raw, yy=y: e.run(p, r, yy),
                "fp32": fp32_model,
            },
            cfg.repeats,
        )
        rate = {k: n / v for k, v in med.items()}
        table.rows.append(
            [
                name,
                label,
                str(n),
                f"{rate['opencl']:.0f}",
                f"{rate['torch']:.0f}",
                f"{rate['fp32']:.0f}",
                f"{rate['opencl'] / rate['fp32']:.2f}x",
                f"{rate['opencl'] / rate['torch']:.2f}x",
            ]
        )
    device = ProxyEngine("opencl")._engine.runtime.name  # type: ignore[attr-defined]
    table.notes += [
        f"batch size {cfg.batch_size}; {cores} cores; torch threads {torch.get_num_threads()}; OpenCL: {device}",
        "proxies include input normalization, the fused softmax/gradient/loss head and the download of all outputs",
    ]
    return table


# --- section: proxy size ------------------------------------------------------------------------------------------


def proxy_size(cfg: Config) -> Table:
    table = Table(
        "Proxy size (bytes)",
        ["model", "params", "int8 proxy", "fp32 proxy", "fp32 state_dict", "int8/state_dict"],
    )
    for name, model, shape in [("mlp", mlp(), (40,)), ("cnn1d", cnn1d(), (40,)), ("resnet20", resnet20(), (3, 32, 32))]:
        example = torch.zeros(1, *shape)
        int8 = len(dumps(export(model, example)))
        fp32 = len(dumps(export(model, example, quantize=None)))
        sd = _state_dict_bytes(model)
        params = sum(p.numel() for p in model.parameters())
        table.rows.append([name, str(params), str(int8), str(fp32), str(sd), f"{int8 / sd:.3f}"])
    table.notes.append("int8: weights per output channel + float32 scales; biases (with folded BatchNorm) float32")
    return table


# --- section: selection kernels vs numpy ---------------------------------------------------------------------------


def selection_kernels(cfg: Config) -> Table:
    """Pairwise-distance blocks and facility-location gains: OpenCL vs the numpy reference (``kernels_selection``).

    ``bench/kernels_selection.py`` prints every selection kernel; this section keeps the two the proxy table is read
    with, so that one run shows them side by side.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import kernels_selection

    table = Table(
        "Selection kernels vs numpy reference (median of runs)",
        ["kernel", "size", "opencl s", "numpy s", "opencl rate", "numpy rate", "opencl/numpy"],
    )
    for r in kernels_selection.rows(cfg.repeats, families=("pairwise", "fl"), quick=cfg.quick):
        table.rows.append(
            [
                r["kernel"],
                r["size"],
                f"{r['opencl_s']:.4f}",
                f"{r['numpy_s']:.4f}",
                f"{r['opencl_rate']:.1f} {r['unit']}",
                f"{r['numpy_rate']:.1f} {r['unit']}",
                f"{r['speedup']:.2f}x",
            ]
        )
    table.notes.append("numpy: nessa.accel.reference.selection (float64 inside, the tests' oracle); all kernels: "
                       "python bench/kernels_selection.py")  # fmt: skip
    return table


#: Sections in print order; append more here.
SECTIONS: list[Callable[[Config], Table]] = [proxy_forward, selection_kernels, proxy_size]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender (median reported)")
    parser.add_argument("--batch-size", type=int, default=256, help="proxy forward batch size")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args(argv)
    cfg = Config(repeats=args.repeats, batch_size=args.batch_size, quick=args.quick)
    for section in SECTIONS:
        print(section(cfg).render(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
