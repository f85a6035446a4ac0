"""OpenCL host runtime: platform choice, program build and cache, per-thread queues and kernels.

The platform is chosen by a case-insensitive substring of its name, from ``NESSA_OPENCL_PLATFORM``
(default: PoCL, "Portable Computing Language", which runs the kernels on the CPU). An unknown name fails with
the list of platforms found.

Programs are built once per process from the OpenCL C sources shipped in ``nessa.fpga_kernels`` and kept.
Kernel objects carry argument state, so each thread gets its own kernels and command queue. On a platform whose
name contains "Xilinx" (a SmartSSD's FPGA) nothing is compiled: the prebuilt ``.xclbin`` named by
``NESSA_XCLBIN`` is loaded once as a program from binaries; it holds every kernel with the same names and
arguments as the sources, so the host code is the same on both paths.

The runtime is per process: after ``fork`` the child builds its own (an OpenCL context must not cross a fork).
"""

from __future__ import annotations

import importlib.resources
import os
import threading
from dataclasses import dataclass

import pyopencl as cl

from nessa.errors import FailedPreconditionError, InvalidArgumentError

__all__ = [
    "DEFAULT_PLATFORM",
    "ENV_PLATFORM",
    "ENV_XCLBIN",
    "OpenCLRuntime",
    "available_platforms",
    "get_runtime",
    "kernel_source",
    "round_up",
]

ENV_PLATFORM = "NESSA_OPENCL_PLATFORM"
ENV_XCLBIN = "NESSA_XCLBIN"
DEFAULT_PLATFORM = "Portable Computing Language"
XILINX_PLATFORM = "xilinx"


def available_platforms() -> list[str]:
    """Names of the OpenCL platforms this process can see (empty if none or no ICD loader)."""
    try:
        return [p.name for p in cl.get_platforms()]
    except cl.Error:
        return []


def _is_xilinx(platform_name: str) -> bool:
    """Whether a platform of this name is a Xilinx FPGA one (programs come from an ``.xclbin``, not source)."""
    return XILINX_PLATFORM in platform_name.lower()


def _compiles(platform: cl.Platform) -> bool:
    """Whether ``platform``'s first device builds a trivial kernel.

    The PoCL 3.0 bundled with pyopencl's wheels fails every build on CPUs its LLVM 14 does not know (e.g. AMD Zen 5:
    "unknown target CPU 'generic'"); Debian's ``pocl-opencl-icd`` works there.
    """
    try:
        context = cl.Context(platform.get_devices()[:1])
        program = cl.Program(context, "__kernel void nessa_probe(__global float* x) { x[0] = 1.0f; }").build()
        cl.Kernel(program, "nessa_probe")  # PoCL 3.0 on an unknown CPU "builds" a program without kernels
    except (cl.Error, IndexError):
        return False
    return True


def kernel_source(name: str) -> str:
    """Return the OpenCL C source of ``fpga_kernels/<name>.cl`` shipped with the package."""
    resource = importlib.resources.files("nessa.fpga_kernels").joinpath(f"{name}.cl")
    if not resource.is_file():
        raise InvalidArgumentError(f"no OpenCL source named {name!r} in nessa.fpga_kernels")
    return resource.read_text(encoding="utf-8")


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n`` (global sizes for partial work-groups)."""
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class _ThreadState:
    queue: cl.CommandQueue
    kernels: dict[tuple[str, str], cl.Kernel]
    spare: dict[tuple[str, str], list[cl.Kernel]]


class OpenCLRuntime:
    """One OpenCL platform/device/context with programs built once and kernels kept per thread.

    Args:
        platform: case-insensitive substring of the platform name; ``None`` reads ``NESSA_OPENCL_PLATFORM``
            and falls back to PoCL.
        xclbin: path of the prebuilt FPGA binary for a Xilinx platform; ``None`` reads ``NESSA_XCLBIN``.
    """

    def __init__(self, platform: str | None = None, xclbin: str | None = None) -> None:
        wanted = platform or os.environ.get(ENV_PLATFORM) or DEFAULT_PLATFORM
        try:
            platforms = cl.get_platforms()
        except cl.Error as exc:  # no ICD loader or no platform at all
            raise FailedPreconditionError(
                f"no OpenCL platform found ({exc}); install one, e.g. `pip install pocl-binary-distribution`"
            ) from exc
        matches = [p for p in platforms if wanted.lower() in p.name.lower()]
        if not matches:
            names = ", ".join(repr(p.name) for p in platforms) or "none"
            raise InvalidArgumentError(
                f"no OpenCL platform matches {wanted!r} (set {ENV_PLATFORM} to a substring of one of: {names})"
            )
        # Several platforms may share a name (pip's PoCL and the distribution's): take the first that can compile.
        # A Xilinx platform compiles nothing (the xclbin is loaded), so it is taken as it is, never probed.
        working = [p for p in matches if _is_xilinx(p.name) or _compiles(p)]
        if not working:
            raise FailedPreconditionError(
                f"OpenCL platform {matches[0].name!r} cannot compile kernels on this CPU (PoCL's LLVM may not know "
                "it: 'unknown target CPU'); install a newer PoCL, e.g. Debian's `apt-get install pocl-opencl-icd`"
            )
        self.platform: cl.Platform = working[0]
        devices = self.platform.get_devices()
        if not devices:
            raise FailedPreconditionError(f"OpenCL platform {self.platform.name!r} has no devices")
        self.device: cl.Device = devices[0]
        self.context = cl.Context([self.device])
        self.is_xilinx = _is_xilinx(self.platform.name)
        self.xclbin_path = xclbin or os.environ.get(ENV_XCLBIN)
        if self.is_xilinx and not self.xclbin_path:
            raise FailedPreconditionError(
                f"platform {self.platform.name!r} needs a prebuilt FPGA binary: set {ENV_XCLBIN} to the "
                "path of the .xclbin built with fpga_kernels/vitis/Makefile"
            )
        self.max_work_group_size = int(self.device.max_work_group_size)
        self._programs: dict[str, cl.Program] = {}
        self._build_lock = threading.Lock()
        self._local = threading.local()

    @property
    def name(self) -> str:
        """Human-readable ``platform / device`` name."""
        return f"{self.platform.name} / {self.device.name}"

    def _thread(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState(queue=cl.CommandQueue(self.context), kernels={}, spare={})
            self._local.state = state
        return state

    @property
    def queue(self) -> cl.CommandQueue:
        """This thread's in-order command queue."""
        return self._thread().queue

    def program(self, source: str, options: tuple[str, ...] = ()) -> cl.Program:
        """The built program for ``fpga_kernels/<source>.cl`` (or the xclbin on Xilinx), built once."""
        key = "__xclbin__" if self.is_xilinx else f"{source}|{' '.join(options)}"
        program = self._programs.get(key)
        if program is not None:
            return program
        with self._build_lock:
            program = self._programs.get(key)
            if program is None:
                program = self._build(source, options)
                self._programs[key] = program
        return program

    def _build(self, source: str, options: tuple[str, ...]) -> cl.Program:
        if self.is_xilinx:
            assert self.xclbin_path is not None
            return self.load_binary(self.xclbin_path)
        return cl.Program(self.context, kernel_source(source)).build(options=list(options))

    def load_binary(self, path: str) -> cl.Program:
        """Load a prebuilt device binary (an ``.xclbin`` on Xilinx) as a program from binaries, and build it.

        This is how every program is obtained on a Xilinx platform (``clCreateProgramWithBinary`` then
        ``clBuildProgram``, which for an xclbin programs the FPGA); other platforms accept their own binaries here.

        Raises:
            FailedPreconditionError: the file cannot be read, or the device rejects the binary.
        """
        try:
            with open(path, "rb") as fh:
                binary = fh.read()
        except OSError as exc:
            raise FailedPreconditionError(f"cannot read the device binary {path!r} ({ENV_XCLBIN}): {exc}") from exc
        if not binary:
            raise FailedPreconditionError(f"the device binary {path!r} ({ENV_XCLBIN}) is empty; rebuild it")
        try:
            return cl.Program(self.context, [self.device], [binary]).build()
        except cl.Error as exc:
            raise FailedPreconditionError(
                f"device {self.device.name!r} rejects the binary {path!r} ({exc}); build it for this platform "
                "with fpga_kernels/vitis/Makefile"
            ) from exc

    def kernel(self, source: str, name: str, options: tuple[str, ...] = ()) -> cl.Kernel:
        """This thread's kernel object ``name`` from program ``source`` (argument state is per thread)."""
        state = self._thread()
        key = (f"{source}|{' '.join(options)}", name)
        kernel = state.kernels.get(key)
        if kernel is None:
            kernel = cl.Kernel(self.program(source, options), name)
            state.kernels[key] = kernel
        return kernel

    def checkout_kernel(self, source: str, name: str) -> cl.Kernel:
        """A kernel object ``name`` of this thread that no one else holds (its arguments are the holder's to set).

        Creating a ``cl.Kernel`` costs pyopencl an invoker lookup in its on-disk cache (about a millisecond), more
        than a small launch; objects handed back with :meth:`checkin_kernel` are reused instead.
        """
        spare = self._thread().spare.get((source, name))
        if spare:
            return spare.pop()
        return cl.Kernel(self.program(source), name)

    def checkin_kernel(self, source: str, name: str, kernel: cl.Kernel) -> None:
        """Hand back a kernel object from :meth:`checkout_kernel` (on the thread that took it) for reuse."""
        spare = self._thread().spare.setdefault((source, name), [])
        if len(spare) < 8:
            spare.append(kernel)


_runtime: OpenCLRuntime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> OpenCLRuntime:
    """The process-wide runtime, created on first use (and again in a forked child)."""
    global _runtime, _runtime_pid
    pid = os.getpid()
    if _runtime is not None and _runtime_pid == pid:
        return _runtime
    with _runtime_lock:
        if _runtime is None or _runtime_pid != pid:
            _runtime = OpenCLRuntime()
            _runtime_pid = pid
    return _runtime
