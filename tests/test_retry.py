"""Backoff for transient provider errors: the provider sync is its one owner, in virtual time."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from tests.simulation.vloop import VirtualTimeLoop
from tests.test_engine import Rig
from trafficflip.backend.provider import Provider
from trafficflip.errors import PermanentProviderError, TransientProviderError
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.retry import BASE_DELAY, MAX_DELAY, backoff_delay
from trafficflip.runtime.sync import RETRY_CAP, URGENT_RETRY_AFTER_CAP

SPACING = Provider.URGENT_RETRY_SPACING


async def failing_once(error: Exception) -> Rig:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.fail = lambda: error
    rig.probe("primary", False)
    await rig.settle()
    return rig


async def moving_by_hand(error: Exception) -> Rig:
    """A planned move (not urgent) whose write fails with ``error``."""
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.fail = lambda: error
    rig.engine.execute("www", "failover", {"to": "dr"}, "test")
    await rig.settle()
    return rig


async def test_a_failed_failover_is_retried_at_the_providers_spacing() -> None:
    rig = await failing_once(TransientProviderError("network down"))
    retry_at = rig.engine.syncs["mem"].retry_at
    assert retry_at is not None and SPACING / 2 <= retry_at - rig.now <= SPACING


def test_a_failover_is_never_retried_behind_a_growing_backoff() -> None:
    """Regression: eight failures in a row pushed a failover's retry past 20 s (the
    exponential backoff of other writes). On virtual time: it lands within 5 s."""
    loop = VirtualTimeLoop()
    attempts: list[float] = []

    def throttled() -> Exception:
        attempts.append(loop.time())
        return TransientProviderError("Throttling", kind="throttled")

    async def scenario() -> float:
        rig = Rig(clock=Clock(monotonic=loop.time, wall=loop.time))
        rig.probe("primary", True), rig.probe("dr", True)
        await rig.settle()
        rig.provider.fail = throttled
        failed_at = loop.time()
        rig.probe("primary", False)
        while len(attempts) < 8:
            await asyncio.sleep(0.05)
        rig.provider.fail = None
        while rig.provider.weights("www") != {"primary": 0, "dr": 100}:
            await asyncio.sleep(0.05)
        rig.engine.halt()
        assert rig.engine.writer is not None
        rig.engine.writer.stop()  # not through the executor: nothing runs real time here
        return loop.time() - failed_at

    try:
        took = loop.run_until_complete(scenario())
    finally:
        loop.close()
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert all(SPACING / 2 <= gap <= SPACING + 0.06 for gap in gaps), gaps
    assert took <= 5.0, took


async def test_a_failover_honours_a_retry_after_only_up_to_its_cap() -> None:
    rig = await failing_once(TransientProviderError("Throttling", retry_after=30.0))
    assert rig.engine.syncs["mem"].retry_at == rig.now + URGENT_RETRY_AFTER_CAP


async def test_other_writes_back_off_and_honour_retry_after() -> None:
    rig = await moving_by_hand(TransientProviderError("Throttling", retry_after=7.0))
    assert rig.engine.syncs["mem"].retry_at == rig.now + 7.0
    rig = await moving_by_hand(TransientProviderError("network down"))
    retry_at = rig.engine.syncs["mem"].retry_at
    assert retry_at is not None and 0.5 <= retry_at - rig.now <= RETRY_CAP


async def test_a_failover_cuts_a_pending_backoff_short() -> None:
    rig = await moving_by_hand(TransientProviderError("Throttling", retry_after=7.0))
    sync = rig.engine.syncs["mem"]
    rig.engine.execute("www", "release", {}, "test")  # back to automatic, still waiting
    rig.probe("primary", False)  # a failover now: it must not wait the 7 s
    assert sync.retry_at is not None and sync.retry_at - rig.now <= URGENT_RETRY_AFTER_CAP


async def test_a_repeated_error_is_logged_at_error_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a wrong TSIG secret was logged at ERROR every second (each tick asked
    again); the journal already said it once per change of error."""
    rig = await failing_once(PermanentProviderError("BADSIG"))
    for _ in range(5):
        await rig.tick()
    rig.provider.fail = lambda: PermanentProviderError("NOTAUTH")
    for _ in range(3):
        await rig.tick()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [m for m in errors if m.startswith("provider_error")]
    assert len(lines) == 2, lines
    assert "BADSIG" in lines[0] and "NOTAUTH" in lines[1]
    assert rig.engine.syncs["mem"].status.errors >= 8  # every repeat is still counted


async def test_a_permanent_error_waits_for_the_reconcile() -> None:
    rig = await failing_once(PermanentProviderError("AccessDenied"))
    assert rig.engine.syncs["mem"].retry_at is None


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, rng=rng) for attempt in range(20)]
    assert all(0 <= d <= min(MAX_DELAY, BASE_DELAY * 2**i) for i, d in enumerate(delays))
