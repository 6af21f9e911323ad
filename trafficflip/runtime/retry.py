"""Jittered exponential backoff for transient provider errors (used by ``ProviderSync``)."""

from __future__ import annotations

import random

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
