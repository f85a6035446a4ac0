"""The daemon's proxy engines: one per engine name, built on first use (the default one warmed up at start)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from nessa.errors import InvalidArgumentError
from nessa.proxy.engine import ENGINES

if TYPE_CHECKING:
    from nessa.proxy import ProxyEngine

__all__ = ["ENGINES", "EnginePool"]


class EnginePool:
    """One proxy engine per backend, built on first use (the default one at startup, so kernels are ready).

    Args:
        default: the backend used when a request names none.
    """

    def __init__(self, default: str = "opencl") -> None:
        self.default = self._check(default)
        self._engines: dict[str, ProxyEngine] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _check(name: str) -> str:
        if name not in ENGINES:
            raise InvalidArgumentError(f"unknown proxy engine {name!r}; use one of {list(ENGINES)}")
        return name

    def get(self, name: str = "") -> ProxyEngine:
        """The engine ``name`` (the default if empty)."""
        name = self._check(name or self.default)
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                from nessa.proxy import ProxyEngine

                engine = ProxyEngine(name)
                self._engines[name] = engine
        return engine

    def warmup(self) -> None:
        """Build the default engine before the daemon reports SERVING; on OpenCL also compile the programs.

        The proxy ops (``fpga_kernels/nn.cl``) and the selection kernels (``fpga_kernels/selection.cl``) are built
        with their default options; conv kernels specialised by tile size are built on first use of a shape.
        """
        self.get()
        if self.default == "opencl":
            from nessa.accel import selection_ops
            from nessa.accel.runtime import get_runtime

            runtime = get_runtime()
            runtime.program("nn")  # fpga_kernels/nn.cl: the proxy ops
            runtime.program(selection_ops.SOURCE)
