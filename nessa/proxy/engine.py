"""Run a proxy over samples: :class:`ProxyEngine` picks an engine by name and runs a proxy batch by batch.

Engines, by name (:data:`ENGINES`; each is imported only when first asked for, so a node that runs only the
OpenCL engine never imports torch):

* ``"opencl"`` (default): the kernels of ``fpga_kernels/nn.cl`` on the OpenCL device;
* ``"torch"``: the same graph with torch ops on the same dequantized weights;
* ``"numpy"``: the numpy reference ops, only when asked for.

No engine falls back to another: a failure is raised. The engine interface is :mod:`nessa.proxy.graph`.

Inputs: ``x`` is a batch of raw samples of the proxy's input dtype (uint8 or float32) whose per-sample shape is the
proxy's input shape, a channel-last version of it, or any shape with the same number of elements (see
:func:`nessa.proxy.format.sample_layout`); ``labels`` are int64 in ``[0, num_classes)``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.proxy.format import Proxy, sample_layout
from nessa.proxy.graph import Engine, ProxyOutputs

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ENGINES",
    "ProxyEngine",
    "SampleReader",
    "load_engine",
    "prepare_input",
]

#: Engines by name → ``module:class`` (imported on first use).
_ENGINE_PATHS = {
    "opencl": "nessa.proxy.opencl_engine:OpenCLEngine",
    "torch": "nessa.proxy.torch_engine:TorchEngine",
    "numpy": "nessa.proxy.numpy_engine:NumpyEngine",
}
#: Engine names, the default first.
ENGINES = tuple(_ENGINE_PATHS)
#: Samples per forward batch unless told otherwise.
DEFAULT_BATCH_SIZE = 256


class SampleReader(Protocol):
    """What :meth:`ProxyEngine.run_dataset` needs from a dataset (``nessa.store.open_dataset(path)``)."""

    labels: np.ndarray

    def read(self, indices: Sequence[int] | np.ndarray) -> list[bytes]:
        """The stored bytes of each index."""
        ...

    def decode(self, data: bytes) -> np.ndarray:
        """One sample as an array."""
        ...


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


def load_engine(name: str) -> Engine:
    """A new engine ``name`` (one of :data:`ENGINES`), importing its module on first use."""
    path = _ENGINE_PATHS.get(name)
    if path is None:
        raise InvalidArgumentError(f"unknown proxy engine {name!r}; choose one of: {', '.join(ENGINES)}")
    module, _, cls = path.partition(":")
    engine: Engine = getattr(importlib.import_module(module), cls)()
    return engine


class ProxyEngine:
    """Runs proxies over batches of samples with one engine.

    Args:
        engine: ``"opencl"`` (default), ``"torch"`` or ``"numpy"``.
        batch_size: samples per forward batch (default :data:`DEFAULT_BATCH_SIZE`).
        backend: the former name of ``engine``, accepted until every caller says ``engine``.

    The engine is safe to share between threads (runs are serialized per engine).
    """

    def __init__(
        self, engine: str = "opencl", batch_size: int = DEFAULT_BATCH_SIZE, *, backend: str | None = None
    ) -> None:
        name = engine if backend is None else backend
        self.batch_size = _check_batch_size(batch_size)
        self.engine_name = name
        self._engine = load_engine(name)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProxyEngine(engine={self.engine_name!r}, batch_size={self.batch_size})"

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
                self._engine.forward(proxy, batch[lo : lo + bs], y[lo : lo + bs], bs)
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
