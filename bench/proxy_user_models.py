"""Proxy forward of users' models: the small ViT and SiLU ResNet of ``tests/common/user_models.py`` on each engine.

Usage: ``python bench/proxy_user_models.py [--repeats 5] [--samples 512] [--batch-size 256]``

Per model: samples/s of the OpenCL graph proxy (int8, ``fpga_kernels/nn.cl`` + ``nn_ext.cl``), the torch engine on
the same proxy, the torch path (a ``torch.export`` program of the same model, as a model outside the vocabulary
would run), and the fp32 model itself under ``no_grad``. Medians of interleaved runs after a warm-up each.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests", "common")]

from kernels import interleaved_medians  # noqa: E402
from user_models import silu_resnet, tiny_vit  # noqa: E402

from nessa.proxy import Normalization, ProxyEngine, export  # noqa: E402
from nessa.proxy.torch_export import UnsupportedOpError  # noqa: E402
from nessa.proxy.torch_program import export_program  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    norm = Normalization(dtype="uint8", scale=1 / 255)
    raw = rng.integers(0, 256, (args.samples, 3, 16, 16), dtype=np.uint8)
    y = rng.integers(0, 3, args.samples)
    x = torch.from_numpy(raw).float() / 255
    engines = {b: ProxyEngine(b, batch_size=args.batch_size) for b in ("opencl", "torch")}
    print(f"{'model':12} {'opencl int8':>12} {'torch int8':>11} {'torch.export':>13} {'fp32 model':>11}  samples/s")
    for name, build in (("tiny ViT", tiny_vit), ("SiLU ResNet", silu_resnet)):
        torch.manual_seed(0)
        model = build().eval()
        graph = export(model, x[:1], normalization=norm, fallback=False)
        program = export_program(model, x[:1], norm, 0, UnsupportedOpError("bench", "bench", "<root>"))

        def fp32(m: torch.nn.Module = model) -> None:
            with torch.no_grad():
                for lo in range(0, args.samples, args.batch_size):
                    m(x[lo : lo + args.batch_size])

        med = interleaved_medians(
            {
                "opencl": lambda g=graph: engines["opencl"].run(g, raw, y),
                "torch": lambda g=graph: engines["torch"].run(g, raw, y),
                "program": lambda p=program: engines["torch"].run(p, raw, y),
                "fp32": fp32,
            },
            args.repeats,
        )
        rate = {k: args.samples / v for k, v in med.items()}
        print(f"{name:12} {rate['opencl']:12.0f} {rate['torch']:11.0f} {rate['program']:13.0f} {rate['fp32']:11.0f}")
    print(f"batch size {args.batch_size}; torch threads {torch.get_num_threads()}; 16x16 RGB uint8 inputs")


if __name__ == "__main__":
    main()
