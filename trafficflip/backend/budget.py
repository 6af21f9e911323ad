"""Call budgets: a provider spends one before every backend API call, so quotas hold before
the backend has to enforce them (Route53 throttles a whole account, not one client).

``TokenBucket`` is the pure rule and takes the time as an argument; ``CallBudget`` wraps it
with a clock and a sleep, both injectable so tests run in virtual time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up (default: one call).

    A reservation always succeeds and says how long to wait: tokens go negative, so callers
    queue in the order they asked and the rate holds over any window.
    """

    def __init__(self, rate: float, burst: float = 1.0, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be above 0 and burst at least 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def reserve(self, now: float, tokens: float = 1.0) -> float:
        """Take ``tokens``; seconds to wait until the call may go (0.0 when it may now)."""
        self._refill(now)
        self._tokens -= tokens
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def hold(self, now: float, seconds: float) -> None:
        """The backend throttled us: spend nothing more for ``seconds`` (its retry-after or
        our backoff), whatever was saved up."""
        self._refill(now)
        self._tokens = min(self._tokens, 0.0) - seconds * self.rate

    def available(self, now: float) -> float:
        """Tokens saved up at ``now`` (negative while reservations wait)."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now


class CallBudget:
    """A ``TokenBucket`` on a clock: ``await spend()`` before each call. ``None`` as the rate
    means no budget (the backend has no quota to respect)."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.bucket = TokenBucket(rate, burst, clock()) if rate is not None else None
        self.spent = 0
        self.waited = 0.0

    async def spend(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` calls fit the budget, and take them."""
        self.spent += 1
        if self.bucket is None:
            return
        wait = self.bucket.reserve(self.clock(), tokens)
        if wait > 0:
            self.waited += wait
            await self.sleep(wait)

    def hold(self, seconds: float) -> None:
        """A throttling answer: later calls wait ``seconds`` more."""
        if self.bucket is not None and seconds > 0:
            self.bucket.hold(self.clock(), seconds)
