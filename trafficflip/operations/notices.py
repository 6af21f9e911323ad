"""What the notifier queues: one ``Notice``, a ``Digest`` of many, and the bounded
``NoticeQueue`` per target that drops the least important first."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from trafficflip.decision.model import EventKind

DIGEST = "digest"
# When a queue is full the least important notice goes first (the oldest of its rank): a
# ramp step is stale a minute later, an all_down or a recovery is not. Unlisted kinds rank 1.
IMPORTANCE: dict[str, int] = {
    EventKind.ALL_DOWN: 3,
    EventKind.RECOVERED: 3,
    EventKind.FAILOVER: 3,
    EventKind.FAILBACK_ABORTED: 3,
    EventKind.PROVIDER_ERROR: 2,
    EventKind.PROVIDER_RECOVERED: 2,
    EventKind.FAILBACK_COMPLETED: 2,
    EventKind.COMMAND: 2,
    EventKind.RAMP_STEP: 0,
    EventKind.FAILBACK_STARTED: 0,
    EventKind.TTL_LOWERED: 0,
    EventKind.TTL_RESTORED: 0,
}


@dataclass(frozen=True)
class Notice:
    """One thing to tell: an event ``EventKind`` (as its string) and its one-line message."""

    event: str
    message: str
    at: float
    service: str | None = None
    data: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Digest:
    """The notices a target's queue gathered during a burst, sent as one POST (in time
    order). Named like a notice in logs: event ``digest``, no service."""

    notices: tuple[Notice, ...]
    event: str = DIGEST
    service: str | None = None

    @classmethod
    def of(cls, notices: Sequence[Notice]) -> Digest:
        return cls(tuple(sorted(notices, key=lambda n: n.at)))

    @property
    def at(self) -> float:
        return self.notices[-1].at

    @property
    def message(self) -> str:
        """``12 notices (failover 10, recovered 2) for 10 services``."""
        kinds = Counter(n.event for n in self.notices)
        services = {n.service for n in self.notices if n.service}
        summary = ", ".join(f"{kind} {count}" for kind, count in kinds.most_common())
        return f"{len(self.notices)} notices ({summary}) for {len(services)} services"


Outgoing = Notice | Digest


class NoticeQueue:
    """A bounded queue of notices that, when full, drops the least important one (the
    oldest of the lowest ``IMPORTANCE``), and hands out the most important first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ranks: dict[int, deque[Notice]] = {}
        self._count = 0
        self._unfinished = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return self._count

    def put(self, notice: Notice) -> Notice | None:
        """Queue ``notice``; the notice dropped to make room, if any (maybe ``notice``)."""
        rank = IMPORTANCE.get(notice.event, 1)
        if self._count >= self.size:
            lowest = min(r for r, queued in self._ranks.items() if queued)
            if lowest > rank:
                return notice
            dropped = self._ranks[lowest].popleft()
            self._count -= 1
            self._unfinished -= 1
        else:
            dropped = None
        self._ranks.setdefault(rank, deque()).append(notice)
        self._count += 1
        self._unfinished += 1
        self._ready.set()
        self._idle.clear()
        return dropped

    def take(self, limit: int) -> list[Notice]:
        """Up to ``limit`` notices, the most important first; ``done`` them once handled."""
        taken: list[Notice] = []
        for rank in sorted(self._ranks, reverse=True):
            queued = self._ranks[rank]
            while queued and len(taken) < limit:
                taken.append(queued.popleft())
        self._count -= len(taken)
        if not self._count:
            self._ready.clear()
        return taken

    def done(self, count: int) -> None:
        self._unfinished -= count
        if self._unfinished <= 0:
            self._unfinished = 0
            self._idle.set()

    async def wait(self) -> None:
        """Until something is queued."""
        await self._ready.wait()

    async def join(self) -> None:
        """Until everything queued was taken and done."""
        await self._idle.wait()
