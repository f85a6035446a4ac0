"""Near-storage compute: the OpenCL host runtime, typed kernel ops, and their numpy references.

``nessa.accel.reference`` holds every op in numpy: the test oracle, and a backend a user can ask for
(``backend="numpy"``), never a silent fallback.
"""

from __future__ import annotations

from nessa.accel.runtime import OpenCLRuntime, available_platforms, get_runtime

__all__ = ["BACKENDS", "OpenCLRuntime", "available_platforms", "get_runtime"]

#: The compute backends every op offers: OpenCL kernels (default) or the numpy reference.
BACKENDS = ("opencl", "numpy")
