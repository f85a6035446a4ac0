"""Run a proxy over samples: :class:`ProxyEngine`, :class:`ProxyOutputs`, and the backend interface.

``ProxyEngine(backend)`` runs a proxy batch by batch and returns, per sample, the logits, the last-layer gradient
``softmax(z) - onehot(y)`` (what CRAIG/CREST-style selectors call the gradient proxy), the cross-entropy loss and
the embedding (the marked node's output, the input of the last linear layer). Backends:

* ``"opencl"`` (default): the near-storage path, kernels of ``fpga_kernels/nn.cl`` on the OpenCL device
  (:mod:`nessa.proxy.opencl_engine`);
* ``"torch"``: the same graph with torch ops on the same dequantized weights (:mod:`nessa.proxy.torch_engine`);
* ``"numpy"``: the numpy reference ops (:mod:`nessa.proxy.numpy_engine`), only when asked for.

No backend falls back to another: a failure is raised.

Inputs: ``x`` is a batch of raw samples of the proxy's input dtype (uint8 or float32) whose per-sample shape is the
proxy's input shape, a channel-last version of it, or any shape with the same number of elements (see
:func:`nessa.proxy.format.sample_layout`); ``labels`` are int64 in ``[0, num_classes)``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.proxy.format import INPUT, Proxy, sample_layout
from nessa.v1 import proxy_pb2 as pb

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "Backend",
    "GraphOps",
    "ProxyEngine",
    "ProxyOutputs",
    "SampleReader",
    "interpret",
    "prepare_input",
]

#: Backends by name.
BACKENDS = ("opencl", "torch", "numpy")
#: Samples per forward batch unless told otherwise.
DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class ProxyOutputs:
    """Per-sample outputs of a proxy forward pass (numpy, float32).

    Attributes:
        logits: ``(N, C)``.
        grad_embedding: ``softmax(logits) - onehot(labels)``, ``(N, C)``: the gradient of the loss with respect to
            the logits (the last-layer gradient proxy).
        loss: per-sample cross-entropy, ``(N,)``.
        embedding: the marked node's output (the input of the last linear layer), ``(N, d)``.
    """

    logits: np.ndarray
    grad_embedding: np.ndarray
    loss: np.ndarray
    embedding: np.ndarray

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @staticmethod
    def concat(parts: Sequence[ProxyOutputs]) -> ProxyOutputs:
        """Concatenate batch outputs in order."""
        if len(parts) == 1:
            return parts[0]
        return ProxyOutputs(
            logits=np.concatenate([p.logits for p in parts]),
            grad_embedding=np.concatenate([p.grad_embedding for p in parts]),
            loss=np.concatenate([p.loss for p in parts]),
            embedding=np.concatenate([p.embedding for p in parts]),
        )


class SampleReader(Protocol):
    """What :meth:`ProxyEngine.run_dataset` needs from a dataset (``nessa.store.open_dataset(path)``)."""

    labels: np.ndarray

    def read(self, indices: Sequence[int] | np.ndarray) -> list[bytes]:
        """The stored bytes of each index."""
        ...

    def decode(self, data: bytes) -> np.ndarray:
        """One sample as an array."""
        ...


class Backend(abc.ABC):
    """Runs one batch of a validated proxy. Subclasses set :attr:`name`."""

    name: ClassVar[str]

    @abc.abstractmethod
    def forward(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int) -> ProxyOutputs:
        """Outputs for one batch.

        Args:
            proxy: a validated proxy.
            x: raw samples ``(n, *proxy.input_shape)`` of the proxy's input dtype, ``1 <= n <= batch_size``.
            labels: int64 ``(n,)`` in range.
            batch_size: the largest ``n`` this engine will pass (for buffer planning).
        """


class GraphOps(Protocol):
    """Op implementations :func:`interpret` calls (numpy or torch arrays, batch axis first)."""

    def normalize(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float) -> Any:
        """Raw batch to model input."""
        ...

    def conv(self, x: Any, w: Any, b: Any | None, stride: list[int], padding: list[int]) -> Any:
        """conv1d or conv2d by the weight's rank."""
        ...

    def linear(self, x: Any, w: Any, b: Any | None) -> Any:
        """Fully connected layer."""
        ...

    def relu(self, x: Any) -> Any:
        """ReLU."""
        ...

    def add(self, a: Any, b: Any) -> Any:
        """Elementwise sum."""
        ...

    def pool(self, kind: str, x: Any, kernel: list[int], stride: list[int], padding: list[int]) -> Any:
        """``kind`` is ``"maxpool"`` or ``"avgpool"``; 1-D or 2-D by the input's rank."""
        ...

    def global_avgpool(self, x: Any) -> Any:
        """Mean over the spatial axes."""
        ...

    def flatten(self, x: Any) -> Any:
        """``(N, ...)`` to ``(N, -1)``."""
        ...

    def weight(self, proxy: Proxy, name: str) -> Any:
        """The dequantized float32 tensor ``name`` in this backend's array type."""
        ...


def live_order(proxy: Proxy) -> list[pb.Node]:
    """The nodes the output and embedding depend on, in topological order."""
    by_name = {n.name: n for n in proxy.nodes}
    need: set[str] = set()
    stack = [r for r in (proxy.output, proxy.embedding) if r != INPUT]
    while stack:
        name = stack.pop()
        if name not in need:
            need.add(name)
            stack.extend(s for s in by_name[name].inputs if s != INPUT)
    return [n for n in proxy.order() if n.name in need]


def interpret(proxy: Proxy, x: np.ndarray, ops: GraphOps) -> tuple[Any, Any]:
    """Evaluate ``proxy`` on raw batch ``x`` with ``ops``; return ``(logits, embedding)`` in the ops' array type."""
    spec = proxy.message.input
    values: dict[str, Any] = {
        INPUT: ops.normalize(x, np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32), spec.scale)
    }
    order = live_order(proxy)
    remaining: dict[str, int] = {}
    for node in order:
        for src in node.inputs:
            remaining[src] = remaining.get(src, 0) + 1
    keep = {proxy.output, proxy.embedding}
    for node in order:
        op = proxy.op(node)
        ins = [values[s] for s in node.inputs]
        if op in ("conv1d", "conv2d"):
            stride, padding = proxy.conv_params(node)
            bias = ops.weight(proxy, node.bias) if node.bias else None
            out = ops.conv(ins[0], ops.weight(proxy, node.weight), bias, stride, padding)
        elif op == "linear":
            bias = ops.weight(proxy, node.bias) if node.bias else None
            out = ops.linear(ins[0], ops.weight(proxy, node.weight), bias)
        elif op == "relu":
            out = ops.relu(ins[0])
        elif op == "add":
            out = ops.add(ins[0], ins[1])
        elif op in ("maxpool", "avgpool"):
            kernel, stride, padding = proxy.pool_params(node, len(ins[0].shape) - 2)
            out = ops.pool(op, ins[0], kernel, stride, padding)
        elif op == "global_avgpool":
            out = ops.global_avgpool(ins[0])
        else:
            out = ops.flatten(ins[0])
        values[node.name] = out
        for src in node.inputs:
            remaining[src] -= 1
            if remaining[src] == 0 and src not in keep:
                del values[src]
    return values[proxy.output], values[proxy.embedding]


def prepare_input(proxy: Proxy, x: np.ndarray) -> np.ndarray:
    """Check a raw batch against the proxy's input and lay it out as ``(N, *proxy.input_shape)``.

    Raises:
        InvalidArgumentError: empty batch, wrong dtype, or a per-sample shape that does not map to the input.
    """
    arr = np.asarray(x)
    if arr.ndim < 1 or arr.shape[0] == 0:
        raise InvalidArgumentError(f"no samples to run the proxy on (batch shape {arr.shape})")
    want = proxy.input_dtype
    if want == np.uint8:
        if arr.dtype != np.uint8:
            raise InvalidArgumentError(
                f"this proxy takes raw uint8 samples (it scales them by {proxy.normalization.scale}); got {arr.dtype}"
            )
    elif not np.issubdtype(arr.dtype, np.floating):
        raise InvalidArgumentError(f"this proxy takes float32 samples; got dtype {arr.dtype}")
    else:
        arr = arr.astype(np.float32, copy=False)
    layout = sample_layout(arr.shape[1:], proxy.input_shape)
    if layout is None:
        raise InvalidArgumentError(
            f"samples of shape {arr.shape[1:]} do not fit the proxy's input shape {proxy.input_shape}; "
            "run a proxy exported for this dataset"
        )
    if layout == "hwc":
        arr = arr.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(arr).reshape((arr.shape[0], *proxy.input_shape))


def _check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise InvalidArgumentError(f"need one label per sample: {n} samples but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidArgumentError(f"labels must be integers; got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InvalidArgumentError(
            f"labels must be in [0, {num_classes}) for this proxy; got values from {y.min()} to {y.max()}"
        )
    return y.astype(np.int64, copy=False)


def _make_backend(name: str) -> Backend:
    # Imported here so that a torch-only or numpy-only user never builds OpenCL programs (and vice versa).
    if name == "opencl":
        from nessa.proxy.opencl_engine import OpenCLBackend

        return OpenCLBackend()
    if name == "torch":
        from nessa.proxy.torch_engine import TorchBackend

        return TorchBackend()
    if name == "numpy":
        from nessa.proxy.numpy_engine import NumpyBackend

        return NumpyBackend()
    raise InvalidArgumentError(f"unknown proxy backend {name!r}; choose one of: {', '.join(BACKENDS)}")


class ProxyEngine:
    """Runs proxies over batches of samples with one backend.

    Args:
        backend: ``"opencl"`` (default), ``"torch"`` or ``"numpy"``.
        batch_size: samples per forward batch (default :data:`DEFAULT_BATCH_SIZE`).

    The engine is safe to share between threads (runs are serialized per engine).
    """

    def __init__(self, backend: str = "opencl", batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.batch_size = _check_batch_size(batch_size)
        self.backend_name = backend
        self._backend = _make_backend(backend)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProxyEngine(backend={self.backend_name!r}, batch_size={self.batch_size})"

    def run(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int | None = None) -> ProxyOutputs:
        """Forward ``x`` through ``proxy`` in batches.

        Args:
            proxy: the proxy (validated here on first use).
            x: ``(N, ...)`` raw samples (uint8 or float32, see the module docstring).
            labels: ``(N,)`` int64 labels.
            batch_size: overrides the engine's batch size for this call.

        Returns:
            :class:`ProxyOutputs` with N rows.

        Raises:
            InvalidArgumentError: a bad proxy, batch or labels.
        """
        bs = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        proxy.validate()
        batch = prepare_input(proxy, x)
        y = _check_labels(labels, batch.shape[0], proxy.num_classes)
        with self._lock:
            parts = [
                self._backend.forward(proxy, batch[lo : lo + bs], y[lo : lo + bs], bs)
                for lo in range(0, batch.shape[0], bs)
            ]
        return ProxyOutputs.concat(parts)

    def run_dataset(
        self,
        proxy: Proxy,
        reader: SampleReader,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> ProxyOutputs:
        """Forward stored samples through ``proxy``, reading and decoding them batch by batch.

        Args:
            proxy: the proxy.
            reader: a dataset reader (``read(indices) -> list[bytes]``, ``decode(bytes) -> ndarray``, ``labels``),
                e.g. ``nessa.store.open_dataset(path)``.
            indices: which samples, in output order (default: all).
            batch_size: overrides the engine's batch size.

        Returns:
            :class:`ProxyOutputs` with one row per index.
        """
        bs = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        all_labels = np.asarray(reader.labels)
        idx = np.arange(all_labels.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0:
            raise InvalidArgumentError(f"indices must be a non-empty 1-D list; got shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= all_labels.shape[0]:
            raise InvalidArgumentError(
                f"indices must be in [0, {all_labels.shape[0]}); got values from {idx.min()} to {idx.max()}"
            )
        parts = []
        for lo in range(0, idx.size, bs):
            chunk = idx[lo : lo + bs]
            samples = np.stack([reader.decode(b) for b in reader.read(chunk)])
            parts.append(self.run(proxy, samples, all_labels[chunk], batch_size=bs))
        return ProxyOutputs.concat(parts)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer; got {batch_size!r}")
    return int(batch_size)
