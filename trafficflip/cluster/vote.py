"""The multi-vantage vote: every member's verdicts on a check -> one status (pure, no I/O).

As Route53 and Cloudflare do with their checkers, no single vantage point can move traffic
on its own view: a check is up when ``quorum`` fresh members see it up, down when so many
see it down that ``quorum`` ups are no longer possible, and unknown otherwise (unknown never
moves traffic). A member that sees *every* check down while another member sees some check
up is cut off itself (its own network), so its votes are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trafficflip.decision.model import SiteHealth, Status

Quorum = Literal["majority", "all", "any"] | int
# A member's verdicts count while they are no older than this many heartbeat intervals.
FRESH_INTERVALS = 3


# One member's view of one check has the shape of a site's health: status, since, reason.
Verdict = SiteHealth


class MalformedEntry(ValueError):
    """A key or value under the prefix this version cannot read (a newer version's, or
    written by hand): skipped, never a reason to stop the loop that reads it."""


def parse_heartbeat(value: bytes) -> float:
    """A member's heartbeat value: when it last published (its wall time)."""
    try:
        at = json.loads(value)["at"]
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise TypeError(f"'at' is {type(at).__name__}")
        return float(at)
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedEntry(f"heartbeat: {exc}") from exc


def parse_verdict(value: bytes) -> tuple[Status, float | None, str]:
    """A member's verdict value: status, since (its wall time) and reason. A status this
    version does not know (a newer version's, in a rolling upgrade) is malformed here."""
    try:
        raw = json.loads(value)
        since, reason = raw["since"], raw["reason"]
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
            raise TypeError(f"'since' is {type(since).__name__}")
        return Status(raw["status"]), None if since is None else float(since), str(reason)
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedEntry(f"verdict: {exc}") from exc


@dataclass(frozen=True)
class MemberView:
    """A member's published verdicts (by check id), when it last published (its wall time)
    and when this instance last read them (this host's wall time; None: just now)."""

    name: str
    seen_at: float
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    read_at: float | None = None

    def age(self, now: float) -> float:
        """How old its verdicts are: since it published them, or since this instance last
        read them when that is longer ago (reads failing: the copy here is frozen)."""
        read = self.seen_at if self.read_at is None else min(self.seen_at, self.read_at)
        return now - read


@dataclass(frozen=True)
class Vote:
    """The voted status of one check and how each counted member voted."""

    status: Status
    since: float | None
    votes: Mapping[str, Status]
    needed: int
    # The oldest counted verdict's age in seconds (None: no member counted).
    age: float | None = None

    @classmethod
    def stale(cls, age: float) -> Vote:
        """No verdict read for ``age`` seconds: unknown, whatever the last votes said."""
        return cls(Status.UNKNOWN, None, {}, 1, age)


def fresh(members: Sequence[MemberView], now: float, window: float) -> list[MemberView]:
    """The members that published within ``window`` seconds of ``now``."""
    return [m for m in members if m.age(now) <= window]


def isolated(members: Sequence[MemberView]) -> set[str]:
    """Members that see every check down while some other member sees a check up."""
    all_down = {
        m.name
        for m in members
        if m.verdicts and all(v.status is Status.DOWN for v in m.verdicts.values())
    }
    sees_up = {m.name for m in members if any(v.status is Status.UP for v in m.verdicts.values())}
    return all_down if sees_up - all_down else set()


def needed(quorum: Quorum, voters: int) -> int:
    """How many up votes make a check up among ``voters`` counted members."""
    if voters == 0:
        return 1
    if quorum == "majority":
        return voters // 2 + 1
    if quorum == "all":
        return voters
    if quorum == "any":
        return 1
    # k of n: with fewer than k members left, all of them (losing members never fails over).
    return max(1, min(int(quorum), voters))


def vote(check: str, voters: Sequence[MemberView], quorum: Quorum, now: float = 0.0) -> Vote:
    """The status of ``check`` among ``voters`` (already fresh and not isolated) at ``now``."""
    age = max((m.age(now) for m in voters), default=None) if now else None
    votes = {
        m.name: m.verdicts[check].status if check in m.verdicts else Status.UNKNOWN for m in voters
    }
    need = needed(quorum, len(voters))
    # Down once ``need`` ups are out of reach; a majority needs a majority both ways, so
    # an even split stays unknown.
    down_need = need if quorum == "majority" else len(voters) - need + 1
    for status, threshold in ((Status.UP, need), (Status.DOWN, down_need)):
        agreeing = sorted(
            v.since
            for m in voters
            if (v := m.verdicts.get(check)) is not None and v.status is status and v.since
        )
        count = sum(1 for s in votes.values() if s is status)
        if voters and count >= threshold:
            # Since the moment the threshold-th member agreed: that is when the vote flipped.
            since = agreeing[threshold - 1] if len(agreeing) >= threshold else None
            return Vote(status, since, votes, need, age)
    return Vote(Status.UNKNOWN, None, votes, need, age)


def tally(
    checks: Sequence[str],
    members: Sequence[MemberView],
    quorum: Quorum,
    now: float,
    window: float,
) -> tuple[dict[str, Vote], set[str]]:
    """Every check's vote over the fresh, non-isolated members; and the isolated ones."""
    current = fresh(members, now, window)
    cut_off = isolated(current)
    voters = [m for m in current if m.name not in cut_off]
    return {check: vote(check, voters, quorum, now) for check in checks}, cut_off
