"""The emulated link: rate parsing and the token bucket's accounting against an injected clock."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from nessa.errors import InvalidArgumentError
from nessa.services.storage.link import Pacer, format_rate, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [("1Gbit", 125e6), ("10Gbit", 1.25e9), ("100Mbit", 12.5e6), ("125MB/s", 125e6), ("1 gbit/s", 125e6),
     ("2.5Gbit", 312.5e6), ("8bit", 1.0), ("1e9bit", 125e6), ("1MiB/s", 1048576.0), ("10Gbits", 1.25e9)],
)  # fmt: skip
def test_rates_parse_in_bits_or_bytes(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["", "fast", "1", "1 parsec", "-1Gbit", "0Mbit"])
def test_bad_rates_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="link rate"):
        parse_rate(text)


def test_format_rate() -> None:
    assert format_rate(125e6) == "1 Gbit/s (125 MB/s)"
    assert format_rate(12.5e6) == "100 Mbit/s (12.5 MB/s)"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def test_grants_stay_within_burst_plus_rate_times_elapsed() -> None:
    clock = FakeClock()
    pacer = Pacer(1e6, burst=100_000, clock=clock, sleep=clock.sleep)
    start, total = clock.now, 0
    for n in [100_000, 50_000, 1, 250_000, 99_999, 500_000] * 5:
        pacer.take(n)
        total += n
        elapsed = clock.now - start
        assert total <= 100_000 + 1e6 * elapsed + 1e-6  # never ahead of the link
        assert total >= 1e6 * elapsed - 1e-6  # and never slower than it while busy
    assert pacer.granted == total
    assert pacer.waited == pytest.approx(clock.now - start)
    assert clock.now - start == pytest.approx((total - 100_000) / 1e6)


def test_an_idle_link_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(1e6, burst=10_000, clock=clock, sleep=clock.sleep)
    assert pacer.take(10_000) == 0  # a full bucket passes at once
    clock.now += 3600  # idle for an hour: still only `burst` of credit
    assert pacer.take(10_000) == 0
    assert pacer.take(20_000) == pytest.approx(0.02)


def test_threads_share_one_bucket() -> None:
    clock, lock = FakeClock(), threading.Lock()

    def sleep(seconds: float) -> None:  # concurrent sleepers: the clock shows the latest wake-up
        with lock:
            clock.now = max(clock.now, start + seconds)

    start = clock.now
    pacer = Pacer(1e6, burst=1, clock=lambda: start, sleep=sleep)
    waits: list[float] = []
    threads = [threading.Thread(target=lambda: waits.append(pacer.reserve(100_000))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Eight reservations against one clock instant: each waits one more message time than the one before.
    assert sorted(round(w, 6) for w in waits) == [round(0.1 * (k + 1) - 1e-6, 6) for k in range(8)]


def test_state_can_live_in_shared_memory() -> None:
    cell = multiprocessing.get_context("spawn").Value("d", float("-inf"))
    clock = FakeClock()
    a = Pacer(1e6, burst=1, clock=clock, sleep=clock.sleep, cell=cell)
    b = Pacer(1e6, burst=1, clock=clock, sleep=clock.sleep, cell=cell)
    a.reserve(500_000)
    assert b.reserve(500_000) == pytest.approx(1.0 - 1e-6)  # b waits behind a's bytes
