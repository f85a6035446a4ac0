"""The torch path of a proxy: a model with an op outside the vocabulary, carried as a ``torch.export`` program.

:func:`export_program` exports the model with a dynamic batch axis, wrapped so that the program returns
``(logits, embedding)`` (the embedding is the input of the last ``nn.Linear`` the forward pass runs, as for a graph
proxy), and stores the ``torch.export.save`` bytes in the proxy's ``program`` field. Only the torch engine runs such
a proxy (:class:`nessa.proxy.torch_engine.TorchEngine`); the daemon reports that the OpenCL path was not used.

A model that ``torch.export`` cannot export either gets one error naming the first op outside the vocabulary and
its module path, and why ``torch.export`` failed.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

from nessa.errors import InvalidArgumentError
from nessa.proxy.format import FORMAT_VERSION, Normalization, Proxy, dtype_enum
from nessa.v1 import proxy_pb2 as pb

__all__ = ["export_program"]


class _WithEmbedding(nn.Module):
    """``model`` returning ``(logits, input of head)``; ``head`` is one of its ``nn.Linear`` layers."""

    def __init__(self, model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self._seen: list[torch.Tensor] = []
        head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._seen.append(args[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._seen.clear()
        logits = self.model(x)
        emb = self._seen[-1]
        self._seen.clear()
        return logits, emb.reshape(emb.shape[0], -1)


def _last_linear(model: nn.Module, example: torch.Tensor) -> tuple[nn.Linear | None, torch.Tensor]:
    """The last ``nn.Linear`` a forward pass on ``example`` runs, and the model's output."""
    order: list[nn.Linear] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args: order.append(mod))  # type: ignore[misc]
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    return (order[-1] if order else None), out


def export_program(
    module: nn.Module, example: torch.Tensor, norm: Normalization, version: int, reason: InvalidArgumentError
) -> Proxy:
    """Export ``module`` (in eval mode) as a program proxy; ``reason`` is the op that kept it off the graph path.

    Raises:
        InvalidArgumentError: the model has no linear layer, does not return ``(N, num_classes)`` logits, or
            ``torch.export`` fails (the message names the unsupported op and module path first).
    """
    op = getattr(reason, "op", "?")
    path = getattr(reason, "path", "?")
    where = f"{op!r} at module {path!r}"
    head, out = _last_linear(module, example)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InvalidArgumentError(
            f"the model's output is not (N, num_classes) logits; a proxy's model must return one logits tensor "
            f"(first op outside the proxy vocabulary: {where})"
        )
    if head is None:
        raise InvalidArgumentError(
            f"the model has no nn.Linear layer; the proxy's embedding is the input of the last linear layer "
            f"(first op outside the proxy vocabulary: {where})"
        )
    wrapped = _WithEmbedding(module, head).eval()
    batch = example if example.shape[0] >= 2 else example.expand(2, *example.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                wrapped, (batch,), dynamic_shapes=({0: torch.export.Dim("batch")},), strict=False
            )
        buf = io.BytesIO()
        torch.export.save(program, buf)
    except Exception as exc:  # torch.export raises many kinds (Unsupported, UserError, TypeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgumentError(
            f"cannot export the model as a proxy: unsupported op {where} is outside the proxy vocabulary, and "
            f"torch.export could not export the model either ({type(exc).__name__}: {first})"
        ) from exc
    msg = pb.Proxy(
        format_version=FORMAT_VERSION,
        version=int(version),
        num_classes=int(out.shape[1]),
        producer=f"nessa.proxy.export (torch.export program); torch {torch.__version__}",
        program=buf.getvalue(),
        program_reason=f"{op} at module {path!r}",
    )
    msg.input.shape.extend(int(v) for v in example.shape[1:])
    msg.input.dtype = dtype_enum(norm.dtype)
    msg.input.scale = float(norm.scale)
    msg.input.mean.extend(norm.mean)
    msg.input.std.extend(norm.std)
    proxy = Proxy(msg)
    proxy.validate()
    return proxy.seal()
