"""Time in the running service: monotonic for every decision, wall time for people and disk.

Probe results, health ``since``, stabilize, step holds, backoff and liveness are all measured
on the monotonic clock, so an NTP step or a resumed VM neither stalls nor hurries a failover.
Wall time appears only where a person reads it (logs, API, page, journal) or where it must
survive a restart (the store); ``to_wall`` converts at that edge.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """A monotonic clock for decisions with a wall clock beside it for display."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall

    def now(self) -> float:
        """Seconds on the monotonic clock: the only time decisions compare."""
        return self._monotonic()

    def wall(self) -> float:
        """Seconds since the epoch, for display and persistence."""
        return self._wall()

    def to_wall(self, moment: float) -> float:
        """A monotonic ``moment`` as epoch seconds, as the wall clock reads now."""
        return self._wall() - (self._monotonic() - moment)

    def from_wall(self, wall: float) -> float:
        """Epoch seconds (from another host, or the disk) as a moment on this monotonic clock."""
        return self._monotonic() - (self._wall() - wall)

    def __call__(self) -> float:
        return self.now()
