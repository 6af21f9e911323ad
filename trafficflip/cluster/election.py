"""Leader election on an etcd lease, with fencing.

Each instance holds one lease, kept alive at a third of its TTL. The leader is whoever
created ``PREFIX/leader`` (bound to its lease) while the key was absent. A leader's writes
are transactions that compare the key's ``create_revision`` with the one it created: once
the lease runs out and another instance creates the key, that revision differs and a late
write is refused by etcd itself.

``may_act(timeout)`` is the authority every provider write asks (``backend/provider.py``):
a call is started only if the lease provably outlasts it. The lease's deadline is counted
from the moment the keepalive was *sent*, so it never outlives the lease etcd holds, on
CLOCK_BOOTTIME, which (unlike CLOCK_MONOTONIC) keeps counting while the host is suspended:
a resumed leader sees its deadline passed. Each write also needs a keepalive *answered*
recently (``fresh_for``): a lease etcd confirmed, not one merely not known to be gone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from trafficflip.cluster.etcd import Compare, EtcdClient, EtcdError, put_op, range_op

log = logging.getLogger("trafficflip.cluster")


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, and counting through a host's suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Leadership:
    """What the last election step saw."""

    leader: str | None
    leading: bool
    etcd_ok: bool
    error: str = ""


class Election:
    """One instance's side of the election; ``step`` is one round, ``run`` loops it."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        name: str,
        ttl: float,
        *,
        clock: Callable[[], float] = boottime,
    ) -> None:
        self.client = client
        self.name = name
        self.key = f"{prefix}/leader"
        self.ttl = max(2, math.ceil(ttl))
        self.clock = clock
        self.lease = 0
        self.deadline = 0.0
        # When etcd last answered a keepalive or grant, on ``clock``.
        self.answered = -math.inf
        # create_revision of the leader key while we hold it; 0 when we do not.
        self.revision = 0
        self.leader: str | None = None
        self.etcd_ok = True
        self.error = ""
        self.terms = 0

    @property
    def period(self) -> float:
        """A third of the TTL: two keepalives may be lost before the lease is."""
        return self.ttl / 3

    @property
    def default_margin(self) -> float:
        """Spare lease time required before a provider call (a quarter of the TTL)."""
        return self.ttl / 4

    @property
    def fresh_for(self) -> float:
        """How long a keepalive answer vouches for writes: one keepalive period plus the
        margin. Never below the period, or writes would stop between two healthy keepalives;
        one keepalive late or lost and every write waits for the next answer."""
        return self.period + self.default_margin

    def is_leader(self, margin: float | None = None) -> bool:
        """True while we hold the leader key and our lease has ``margin`` seconds left."""
        if margin is None:
            margin = self.default_margin
        return self.revision > 0 and self.clock() + margin < self.deadline

    def fresh(self) -> bool:
        """etcd answered a keepalive of our lease less than ``fresh_for`` ago."""
        return self.clock() - self.answered < self.fresh_for

    def may_act(self, timeout: float) -> bool:
        """The authority's answer: a backend call of up to ``timeout`` seconds may start.

        We lead, a keepalive was answered recently, and the lease outlasts the whole call by
        the margin, so the call ends before any other instance can be elected.
        """
        return self.fresh() and self.is_leader(self.default_margin + timeout)

    def call_limit(self) -> float:
        """The longest provider call in cluster mode: the margin (a quarter of the TTL).

        ``may_act`` then needs half the TTL left; keepalives come every third of it, so a
        call can start at any time between two of them, with a twelfth of the TTL to spare
        for a keepalive that comes late."""
        return self.default_margin

    def term(self) -> int:
        """The term we hold: the leader key's create_revision while we hold it, else 0."""
        return self.revision

    def writable(self) -> bool:
        """A state write may be sent now: the lease's deadline has not passed and etcd
        answered a keepalive recently. Otherwise the write waits (it is not refused: etcd
        may yet confirm the lease, or end the term, which refuses it)."""
        return self.fresh() and self.is_leader(0.0)

    def fence(self, term: int | None = None) -> Compare | None:
        """The txn guard for a write made in ``term`` (default: the one we hold now), or
        None when that term is not ours now. etcd compares the revision, so a term that
        ended is refused there too, even if this instance has been elected again since."""
        current = self.revision
        if current == 0 or (term is not None and term != current):
            return None
        return Compare(self.key, "CREATE", current)

    def step(self) -> Leadership:
        """Refresh the lease (or get a new one), try to take the leader key, see who leads.

        Blocking: run it in a worker thread from async code.
        """
        try:
            self._refresh_lease()
            self._campaign()
            self.etcd_ok, self.error = True, ""
        except EtcdError as exc:
            if self.etcd_ok:
                log.error("etcd_unavailable name=%s error=%s", self.name, exc)
            self.etcd_ok, self.error = False, str(exc)
        return Leadership(self.leader, self.is_leader(0.0), self.etcd_ok, self.error)

    def _refresh_lease(self) -> None:
        sent = self.clock()
        if self.lease:
            remaining = self.client.keepalive(self.lease)
            if remaining > 0:
                self.deadline, self.answered = sent + remaining, self.clock()
                return
            log.warning("lease_expired name=%s lease=%x", self.name, self.lease)
            self._lose("lease expired")
            self.lease = 0
        self.lease = self.client.grant(self.ttl)
        self.deadline, self.answered = sent + self.ttl, self.clock()

    def _campaign(self) -> None:
        absent = Compare(self.key, "CREATE", 0)
        result = self.client.txn(
            [absent], [put_op(self.key, self.name.encode(), self.lease)], [range_op(self.key)]
        )
        if result.succeeded:
            self._win(result.revision)
            return
        holders = result.ranges[0] if result.ranges else ()
        holder = holders[0] if holders else None
        if holder is not None and holder.lease == self.lease:
            self._win(holder.create_revision)  # ours already (an earlier step)
            return
        if self.revision:
            self._lose("another instance holds the leader key")
        self.leader = holder.value.decode() if holder is not None else None

    def _win(self, revision: int) -> None:
        if self.revision != revision:
            self.terms += 1
            log.warning("leader_elected name=%s revision=%d", self.name, revision)
        self.revision, self.leader = revision, self.name

    def _lose(self, reason: str) -> None:
        if self.revision:
            log.warning("leader_lost name=%s reason=%r", self.name, reason)
        self.revision = 0
        self.leader = None

    async def run(self, stop: asyncio.Event, on_step: Callable[[Leadership], None]) -> None:
        """Step every ``period`` until ``stop``; then give the lease back."""
        while not stop.is_set():
            on_step(await asyncio.to_thread(self.step))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.period)
            except TimeoutError:
                pass

    def resign(self) -> None:
        """Revoke the lease: the leader key goes at once and another instance takes over."""
        lease, self.lease, self.revision = self.lease, 0, 0
        if lease:
            try:
                self.client.revoke(lease)
            except EtcdError as exc:
                log.warning("resign_failed name=%s error=%s", self.name, exc)
