"""Jittered exponential backoff for transient provider errors."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from trafficflip.errors import TransientProviderError

T = TypeVar("T")
log = logging.getLogger("trafficflip.runtime.retry")

ATTEMPTS = 5
BASE_DELAY = 0.2
MAX_DELAY = 5.0


def backoff_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    rng: random.Random | None = None,
) -> float:
    """Full-jitter backoff: uniform in [0, min(cap, base * 2**attempt)] (AWS's advice)."""
    return (rng or random).uniform(0, min(cap, base * 2**attempt))


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``call``; retry ``TransientProviderError`` with backoff, re-raise the last one.

    ``call`` must build its request afresh each time (a re-sent signed DNS message is
    rejected), so it is a factory, not an awaitable.
    """
    for attempt in range(attempts):
        try:
            return await call()
        except TransientProviderError as exc:
            if attempt == attempts - 1:
                raise
            delay = max(backoff_delay(attempt), exc.retry_after or 0.0)
            log.warning(
                "retry what=%s attempt=%d delay=%.2fs error=%s", what, attempt + 1, delay, exc
            )
            await sleep(delay)
    raise AssertionError("unreachable")
