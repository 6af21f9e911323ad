"""Reading the members' heartbeats and verdicts from etcd, skipping what cannot be read.

Every instance reads ``members/NAME`` and ``verdicts/NAME/CHECK`` (``node.py`` writes them).
One entry this version cannot read (a newer version's status in a rolling upgrade, a key
written by hand) is skipped with one warning per written version and counted: it must never
stop the loop that reads every member's verdicts, on every instance at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trafficflip.cluster.etcd import EtcdClient
from trafficflip.cluster.vote import (
    MalformedEntry,
    MemberView,
    Verdict,
    parse_heartbeat,
    parse_verdict,
)
from trafficflip.runtime.clock import Clock

log = logging.getLogger("trafficflip.cluster")
# Verdict keys per range request: members x checks can outgrow one request's timeout.
READ_PAGE = 1000

_CLOCK = Clock()


@dataclass
class ClusterCounters:
    fencing_refusals: int = 0
    published: int = 0
    etcd_errors: int = 0
    # Entries under the prefix skipped because this version cannot read them.
    malformed: int = 0
    loop_restarts: int = 0


class MemberReader:
    """Reads every live member with its verdicts. Blocking: call it from a worker thread."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        full_every: float,
        counters: ClusterCounters,
        clock: Clock = _CLOCK,
    ) -> None:
        self.client = client
        self.clock = clock
        self.members_prefix = f"{prefix}/members/"
        self.verdicts_prefix = f"{prefix}/verdicts/"
        self.full_every = full_every
        self.counters = counters
        self._verdicts: dict[str, dict[str, Verdict]] = {}
        self._revision = 0
        self._last_full = 0.0
        # Keys already reported, with the revision reported: one warning per version.
        self._reported: dict[str, int] = {}

    def read(self) -> list[MemberView]:
        """Verdicts are read incrementally (only keys changed since the last read); a full
        read every ``full_every`` seconds catches anything missed."""
        seen = self._heartbeats()
        now = self.clock.now()
        full = now - self._last_full >= self.full_every
        changed, revision = self.client.changes(
            self.verdicts_prefix, 0 if full else self._revision, page=READ_PAGE
        )
        if full:
            self._verdicts, self._last_full = {}, now
        for kv in changed:
            self._take(kv.key, kv.value, kv.mod_revision)
        # A member whose lease went took its verdicts along: forget them too.
        self._verdicts = {m: v for m, v in self._verdicts.items() if m in seen}
        self._revision = revision
        read_at = self.clock.wall()
        return [
            MemberView(name, at, dict(self._verdicts.get(name, {})), read_at)
            for name, at in sorted(seen.items())
        ]

    def _heartbeats(self) -> dict[str, float]:
        seen = {}
        for kv in self.client.range(self.members_prefix, prefix=True):
            name = kv.key[len(self.members_prefix) :]
            try:
                if not name or "/" in name:
                    raise MalformedEntry("not members/NAME")
                seen[name] = parse_heartbeat(kv.value)
            except MalformedEntry as exc:
                self._skip(kv.key, kv.mod_revision, exc)
        return seen

    def _take(self, key: str, value: bytes, revision: int) -> None:
        parts = key[len(self.verdicts_prefix) :].split("/")
        if len(parts) != 2 or not all(parts):
            self._skip(key, revision, MalformedEntry("not verdicts/MEMBER/CHECK"))
            return
        member, check = parts
        mine = self._verdicts.setdefault(member, {})
        try:
            status, since, reason = parse_verdict(value)
        except MalformedEntry as exc:
            # As if absent: the member votes unknown on that check.
            self._skip(key, revision, exc)
            mine.pop(check, None)
            return
        # Sent on the member's wall clock; taken back onto this host's monotonic one.
        local_since = None if since is None else _CLOCK.from_wall(since)
        mine[check] = Verdict(status, local_since, reason)

    def _skip(self, key: str, revision: int, exc: MalformedEntry) -> None:
        """Count and log (once per written version) an entry this version cannot read."""
        if self._reported.get(key) == revision:
            return
        self._reported[key] = revision
        self.counters.malformed += 1
        log.warning("cluster_entry_skipped key=%s error=%s", key, exc)
