"""Energy of a process: measured from hardware counters where the machine has them, estimated otherwise.

* **Measured (CPU)**: the kernel's RAPL counters (``/sys/class/powercap/intel-rapl:*/energy_uj``, package domains),
  which count the whole package; a process is charged the package energy in proportion to its share of the
  machine's CPU time over the interval (psutil's per-process and system CPU times).
* **Measured (GPU)**: NVML's total energy counter of the process's CUDA device, through ``pynvml``
  (``nvidia-ml-py``) when it is installed and a CUDA device is in use.
* **Estimated**: where no counter is readable (no RAPL here, as in most VMs and containers), CPU seconds ×
  :data:`WATTS_PER_CORE` (override with ``NESSA_WATTS_PER_CORE``): a busy core of a server CPU draws about 10 W
  (a 150-200 W TDP part with 16-20 cores). Every figure says which it is.

Why not codecarbon or zeus: both read the same two counters and fall back to the same TDP estimate where neither
exists; psutil (CPU times of any process, e.g. the storage daemon by pid) and ``pynvml`` are what they use
underneath and are all NeSSA needs. CO2e is joules × a grid intensity (:data:`GRID_G_CO2E_PER_KWH`, override with
``NESSA_GRID_G_CO2E_PER_KWH``).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from nessa.errors import InvalidArgumentError

__all__ = ["GRID_G_CO2E_PER_KWH", "WATTS_PER_CORE", "EnergyMeter", "EnergyReading", "grams_co2e", "watts_per_core"]

#: Watts a fully busy core is charged when no counter is readable (see the module docstring).
WATTS_PER_CORE = 10.0
#: Grams of CO2e per kWh (world average grid intensity, Ember 2023: about 480 g/kWh).
GRID_G_CO2E_PER_KWH = 480.0
_RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*/energy_uj"


def watts_per_core() -> float:
    """The estimate's watts per busy core (``NESSA_WATTS_PER_CORE`` or :data:`WATTS_PER_CORE`)."""
    raw = os.environ.get("NESSA_WATTS_PER_CORE", "")
    if not raw:
        return WATTS_PER_CORE
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"NESSA_WATTS_PER_CORE must be a number of watts; got {raw!r}") from None
    if not value > 0:
        raise InvalidArgumentError(f"NESSA_WATTS_PER_CORE must be > 0; got {raw!r}")
    return value


def grams_co2e(joules: float) -> float:
    """CO2e of ``joules`` at the grid intensity (``NESSA_GRID_G_CO2E_PER_KWH`` or the world average)."""
    intensity = float(os.environ.get("NESSA_GRID_G_CO2E_PER_KWH", GRID_G_CO2E_PER_KWH))
    return joules / 3.6e6 * intensity


def _rapl_microjoules() -> int | None:
    """The sum of the package RAPL counters, or None when none is readable."""
    paths = sorted(glob.glob(_RAPL_GLOB))
    if not paths:
        return None
    try:
        return sum(int(Path(p).read_text().strip()) for p in paths)
    except (OSError, ValueError):  # present but unreadable (not root): no counter
        return None


@dataclass(frozen=True)
class EnergyReading:
    """Energy of a process over an interval.

    Attributes:
        joules: the energy charged to the process.
        cpu_seconds: its CPU seconds (user + system, all threads) over the interval.
        source: ``"measured (RAPL)"`` or ``"estimated (CPU seconds x W/core)"`` (and ``+ NVML`` with a GPU).
    """

    joules: float
    cpu_seconds: float
    source: str

    @property
    def measured(self) -> bool:
        """Whether a hardware counter produced the figure."""
        return self.source.startswith("measured")

    def as_dict(self) -> dict[str, float | str | bool]:
        """For reports: joules, CPU seconds, grams CO2e, source and whether it was measured."""
        return {
            "joules": self.joules,
            "cpu_seconds": self.cpu_seconds,
            "grams_co2e": grams_co2e(self.joules),
            "source": self.source,
            "measured": self.measured,
        }


class EnergyMeter:
    """Energy of one process (this one by default, or another by pid) since :meth:`reset`.

    Args:
        pid: the process (default: this one).
        gpu_index: the CUDA device whose NVML energy counter is added (None: no GPU).
    """

    def __init__(self, pid: int | None = None, gpu_index: int | None = None) -> None:
        try:
            self._proc = psutil.Process(pid)
        except psutil.Error as exc:
            raise InvalidArgumentError(f"cannot measure the energy of process {pid}: {exc}") from exc
        self._gpu = self._nvml_handle(gpu_index) if gpu_index is not None else None
        self.reset()

    @staticmethod
    def _nvml_handle(index: int) -> object | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError:
            return None

    def _gpu_millijoules(self) -> int | None:
        if self._gpu is None:
            return None
        import pynvml

        try:
            return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._gpu))
        except pynvml.NVMLError:
            return None

    def _cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    @staticmethod
    def _machine_cpu_seconds() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))

    def reset(self) -> None:
        """Start a new interval now."""
        self._cpu0 = self._cpu_seconds()
        self._machine0 = self._machine_cpu_seconds()
        self._rapl0 = _rapl_microjoules()
        self._gpu0 = self._gpu_millijoules()

    def read(self) -> EnergyReading:
        """The energy since :meth:`reset` (the interval goes on)."""
        cpu = max(0.0, self._cpu_seconds() - self._cpu0)
        rapl = _rapl_microjoules()
        if rapl is not None and self._rapl0 is not None and rapl >= self._rapl0:
            machine = max(1e-9, self._machine_cpu_seconds() - self._machine0)
            joules = (rapl - self._rapl0) / 1e6 * min(1.0, cpu / machine)
            source = "measured (RAPL, by CPU share)"
        else:
            joules = cpu * watts_per_core()
            source = f"estimated (CPU seconds x {watts_per_core():g} W/core)"
        gpu = self._gpu_millijoules()
        if gpu is not None and self._gpu0 is not None:
            joules += (gpu - self._gpu0) / 1e3
            source += " + measured GPU (NVML)"
        return EnergyReading(joules=joules, cpu_seconds=cpu, source=source)
