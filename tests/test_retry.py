"""Backoff for transient provider errors, in virtual time (the sleep is recorded, not slept)."""

from __future__ import annotations

import random

import pytest

from trafficflip.errors import PermanentProviderError, TransientProviderError
from trafficflip.runtime.retry import (
    ATTEMPTS,
    BASE_DELAY,
    MAX_DELAY,
    backoff_delay,
    retry_transient,
)


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


async def test_transient_errors_are_retried_with_growing_jittered_delays() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    call = Flaky([TransientProviderError("Throttling", kind="Throttling")] * 3)
    assert await retry_transient(call, what="test", sleep=sleep) == "done"
    assert call.calls == 4
    assert all(0 <= d <= min(MAX_DELAY, BASE_DELAY * 2**i) for i, d in enumerate(slept))


async def test_the_last_transient_error_is_raised_after_the_attempts() -> None:
    async def sleep(delay: float) -> None:
        pass

    call = Flaky([TransientProviderError(f"PriorRequestNotComplete {i}") for i in range(9)])
    with pytest.raises(TransientProviderError, match=f"PriorRequestNotComplete {ATTEMPTS - 1}"):
        await retry_transient(call, what="test", sleep=sleep)
    assert call.calls == ATTEMPTS


async def test_permanent_errors_are_not_retried_and_retry_after_is_honoured() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    call = Flaky([PermanentProviderError("AccessDenied")])
    with pytest.raises(PermanentProviderError):
        await retry_transient(call, what="test", sleep=sleep)
    assert call.calls == 1 and slept == []
    call = Flaky([TransientProviderError("slow down", retry_after=7.0)])
    await retry_transient(call, what="test", sleep=sleep)
    assert slept == [7.0]


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, rng=rng) for attempt in range(20)]
    assert all(0 <= d <= MAX_DELAY for d in delays)
    assert max(delays[10:]) > BASE_DELAY * 4  # it does grow
