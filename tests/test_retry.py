"""Backoff for transient provider errors: the provider sync is its one owner, in virtual time."""

from __future__ import annotations

import random

from tests.test_engine import Rig
from trafficflip.errors import PermanentProviderError, TransientProviderError
from trafficflip.runtime.retry import BASE_DELAY, MAX_DELAY, backoff_delay
from trafficflip.runtime.sync import RETRY_CAP


async def failing_once(error: Exception) -> Rig:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.fail = lambda: error
    rig.probe("primary", False)
    await rig.settle()
    return rig


async def test_a_transient_error_is_retried_after_a_capped_backoff() -> None:
    rig = await failing_once(TransientProviderError("network down"))
    retry_at = rig.engine.syncs["mem"].retry_at
    assert retry_at is not None and 0 < retry_at - rig.now <= RETRY_CAP


async def test_retry_after_is_honoured() -> None:
    rig = await failing_once(TransientProviderError("Throttling", retry_after=7.0))
    assert rig.engine.syncs["mem"].retry_at == rig.now + 7.0


async def test_a_permanent_error_waits_for_the_reconcile() -> None:
    rig = await failing_once(PermanentProviderError("AccessDenied"))
    assert rig.engine.syncs["mem"].retry_at is None


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, rng=rng) for attempt in range(20)]
    assert all(0 <= d <= min(MAX_DELAY, BASE_DELAY * 2**i) for i, d in enumerate(delays))
