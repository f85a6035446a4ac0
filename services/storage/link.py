"""An emulated storage link: ``--link-rate RATE`` paces the bytes the daemon sends and receives.

NeSSA's premise is that the link between storage and trainer (a network, or PCIe to a SmartSSD) is what a selection
saves. On one machine every byte moves through memory, so ``nessa serve --link-rate 1Gbit`` adds what a link of
that rate would cost: each stream message waits, before gRPC sends it, until a token bucket of that rate has granted
its bytes, and each pushed proxy chunk waits likewise as it arrives. Sending and receiving have a bucket each (a
full-duplex link). This is an emulation: it bounds the rate, not latency, TCP behaviour or contention with other
traffic, and only the bulk bytes are paced (stream messages, proxy chunks; not the small unary replies).

:func:`parse_rate` reads rates such as ``100Mbit``, ``1Gbit``, ``10Gbit``, ``125MB/s`` (decimal units: 1 Gbit/s is
125,000,000 bytes per second). :class:`Pacer` is the token bucket (GCRA form): ``take(n)`` returns once the bytes
granted since the start stay within ``burst + rate * elapsed``. Its state can live in shared memory, so the stream
worker processes of ``--workers`` share one link.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nessa.errors import InvalidArgumentError
from nessa.metrics import LINK_WAIT

__all__ = ["BURST_BYTES", "Link", "Pacer", "format_rate", "parse_rate"]

#: What the emulated link lets pass at once after an idle spell (about a socket's buffer): small, so that even a
#: small stream is paced at the rate; a larger message waits for its whole size.
BURST_BYTES = 64 * 1024

_UNITS = {
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3,
}  # fmt: skip
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]+)?\s*(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """Bytes per second of a rate such as ``1Gbit``, ``100Mbit/s``, ``125MB/s`` or ``1e9bit``.

    Raises:
        InvalidArgumentError: not a rate, or not positive.
    """
    match = _RATE_RE.match(text or "")
    unit = (match.group(2) or "").lower() if match else ""
    if unit.endswith("bits"):
        unit = unit[:-1]
    if match is None or unit not in _UNITS:
        raise InvalidArgumentError(
            f"link rate {text!r} is not a rate; give a number and a unit, e.g. 100Mbit, 1Gbit, 10Gbit or 125MB/s "
            "(bit units are bits per second, B units bytes per second)"
        )
    rate = float(match.group(1)) * _UNITS[unit]
    if not rate > 0:
        raise InvalidArgumentError(f"link rate {text!r} must be > 0")
    return rate


def format_rate(bytes_per_second: float) -> str:
    """``1 Gbit/s (125 MB/s)``-style text of a rate."""
    bits = bytes_per_second * 8
    for scale, name in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= scale:
            return f"{bits / scale:g} {name} ({bytes_per_second / 1e6:g} MB/s)"
    return f"{bits:g} bit/s ({bytes_per_second:g} B/s)"


class _LocalCell:
    """The bucket's one number (its theoretical arrival time) in this process."""

    def __init__(self) -> None:
        self.value = float("-inf")
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


class Pacer:
    """A token bucket of ``rate`` bytes per second holding at most ``burst`` bytes (thread- and process-safe).

    Args:
        rate: bytes per second.
        burst: bytes that may pass at once after an idle spell (at least one message's worth).
        clock: seconds, monotonic (``time.monotonic``; the same clock in every process on Linux).
        sleep: how to wait.
        cell: where the bucket's state lives: an object with ``value`` (float) and ``get_lock()``, e.g. a
            ``multiprocessing.Value("d")`` shared with worker processes; default: this process only.

    Attributes:
        granted: bytes granted so far (by this object).
        waited: seconds this object's callers spent waiting.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        cell: Any = None,
    ) -> None:
        if not rate > 0:
            raise InvalidArgumentError(f"pacer rate must be > 0; got {rate}")
        if burst < 1:
            raise InvalidArgumentError(f"pacer burst must be >= 1 byte; got {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._cell = cell if cell is not None else _LocalCell()
        self._tau = self.burst / self.rate
        self.granted = 0
        self.waited = 0.0

    def reserve(self, nbytes: int) -> float:
        """Account ``nbytes`` and return the seconds to wait before they may pass (0 when within the burst)."""
        with self._cell.get_lock():
            now = self._clock()
            # tat: when everything granted so far will have crossed the link at `rate`; a grant may run ahead of it
            # by at most tau = burst / rate (the bucket holds at most `burst` bytes of credit).
            tat = max(self._cell.value, now) + nbytes / self.rate
            self._cell.value = tat
        self.granted += int(nbytes)
        return max(0.0, tat - self._tau - now)

    def take(self, nbytes: int) -> float:
        """Wait until ``nbytes`` may pass; returns the seconds waited."""
        wait = self.reserve(nbytes)
        if wait > 0:
            self._sleep(wait)
            self.waited += wait
        return wait


class Link:
    """The two directions of an emulated link, each a :class:`Pacer` (waits counted in ``nessa_link_wait_seconds``).

    Args:
        rate: bytes per second, each way.
        burst: bytes either direction may pass at once after an idle spell.
        cells: the two pacers' shared states ``(send, receive)`` (see :class:`Pacer`), or ``None`` for this process.
    """

    def __init__(self, rate: float, burst: int = BURST_BYTES, cells: tuple[Any, Any] | None = None) -> None:
        send_cell, receive_cell = cells if cells is not None else (None, None)
        self.rate = float(rate)
        self.outgoing = Pacer(rate, burst, cell=send_cell)
        self.incoming = Pacer(rate, burst, cell=receive_cell)
        self._send_wait = LINK_WAIT.labels(direction="send")
        self._receive_wait = LINK_WAIT.labels(direction="receive")

    def send(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may leave."""
        waited = self.outgoing.take(nbytes)
        if waited:
            self._send_wait.inc(waited)

    def received(self, messages: Iterable[Any]) -> Iterator[Any]:
        """``messages`` (each with a ``data`` field), each passed on once the link has carried its bytes."""
        for msg in messages:
            waited = self.incoming.take(len(msg.data))
            if waited:
                self._receive_wait.inc(waited)
            yield msg
