"""Energy of a process: an estimate from its CPU seconds where no counter is readable, labelled so."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from nessa.energy import EnergyMeter, grams_co2e, watts_per_core
from nessa.errors import InvalidArgumentError


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_this_process_is_charged_for_the_cpu_it_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESSA_WATTS_PER_CORE", "20")
    meter = EnergyMeter()
    _spin(0.2)
    reading = meter.read()
    assert reading.cpu_seconds >= 0.18
    if not reading.measured:  # no RAPL here: CPU seconds × W/core, and it says so
        assert reading.joules == pytest.approx(20 * reading.cpu_seconds)
        assert reading.source.startswith("estimated") and "20 W/core" in reading.source
    facts = reading.as_dict()
    assert facts["grams_co2e"] == pytest.approx(grams_co2e(reading.joules)) and facts["measured"] == reading.measured
    meter.reset()
    assert meter.read().cpu_seconds < reading.cpu_seconds


def test_another_process_is_metered_by_pid() -> None:
    script = (
        "import sys, time\nsys.stdin.readline()\nend = time.process_time() + 0.3\n"
        "while time.process_time() < end:\n    pass\ntime.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    try:
        meter = EnergyMeter(child.pid)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 20
        while meter.read().cpu_seconds < 0.25:
            assert time.monotonic() < deadline, "the child's CPU time never showed"
            time.sleep(0.05)
        assert meter.read().joules > 0
    finally:
        child.kill()
        child.wait()


def test_bad_settings_and_missing_processes_get_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESSA_WATTS_PER_CORE", "lots")
    with pytest.raises(InvalidArgumentError, match="NESSA_WATTS_PER_CORE"):
        watts_per_core()
    monkeypatch.delenv("NESSA_WATTS_PER_CORE")
    assert watts_per_core() == 10.0
    with pytest.raises(InvalidArgumentError, match="cannot measure"):
        EnergyMeter(2**22 + os.getpid())
