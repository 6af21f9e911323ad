"""Call budgets in virtual time: no test here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from trafficflip.backend.budget import CallBudget, TokenBucket


class VirtualTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sent: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("rate", "burst", "calls", "at"),
    [
        (5, 1, 6, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (5, 3, 5, [0.0, 0.0, 0.0, 0.2, 0.4]),
        (0.5, 1, 3, [0.0, 2.0, 4.0]),
    ],
)
def test_reservations_space_calls_at_the_rate(
    rate: float, burst: float, calls: int, at: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    assert [round(bucket.reserve(0.0), 6) for _ in range(calls)] == at


def test_idle_time_refills_up_to_the_burst_only() -> None:
    bucket = TokenBucket(5, 2, now=0.0)
    bucket.reserve(0.0)
    bucket.reserve(0.0)
    assert bucket.available(0.1) == pytest.approx(0.5)
    assert bucket.available(3600.0) == 2
    assert bucket.reserve(3600.0) == 0.0


def test_a_throttling_answer_holds_every_later_call() -> None:
    bucket = TokenBucket(5, 5, now=0.0)
    bucket.hold(0.0, 2.0)
    assert bucket.reserve(0.0) == pytest.approx(2.2)
    assert bucket.reserve(2.2) == pytest.approx(0.2)


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(5, 0.5)


async def test_budget_keeps_any_one_second_window_within_the_rate() -> None:
    time = VirtualTime()
    budget = CallBudget(5, clock=time.clock, sleep=time.sleep)

    async def call() -> None:
        await budget.spend()
        time.sent.append(time.now)

    for _ in range(50):
        await call()
    assert time.sent[-1] - time.sent[0] == pytest.approx(49 / 5)
    for start in time.sent:
        in_window = [t for t in time.sent if start <= t < start + 1.0 - 1e-9]
        assert len(in_window) <= 5
    assert budget.spent == 50 and budget.waited == pytest.approx(49 / 5)


async def test_concurrent_callers_queue_in_order() -> None:
    time = VirtualTime()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the clock stands still: all ask at once
        waits.append(seconds)

    budget = CallBudget(10, clock=time.clock, sleep=sleep)
    await asyncio.gather(*(budget.spend() for _ in range(4)))
    assert [round(w, 6) for w in waits] == [0.1, 0.2, 0.3]


async def test_no_rate_means_no_budget() -> None:
    time = VirtualTime()
    budget = CallBudget(None, clock=time.clock, sleep=time.sleep)
    for _ in range(1000):
        await budget.spend()
    budget.hold(10)
    await budget.spend()
    assert time.now == 100.0 and budget.spent == 1001
