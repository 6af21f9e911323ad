"""The vote, table-driven: verdicts of members -> a check's status by quorum; isolation."""

from __future__ import annotations

import pytest

from trafficflip.cluster.vote import MemberView, Quorum, Verdict, needed, tally, vote
from trafficflip.decision.model import Status

UP, DOWN, UNKNOWN = Status.UP, Status.DOWN, Status.UNKNOWN
NOW = 1000.0
WINDOW = 30.0


def members(*views: dict[str, Status], seen: float = NOW) -> list[MemberView]:
    return [
        MemberView(f"m{i}", seen, {c: Verdict(s, since=100.0 + i) for c, s in v.items()})
        for i, v in enumerate(views)
    ]


@pytest.mark.parametrize(
    ("quorum", "statuses", "expected"),
    [
        ("majority", [UP, UP, UP], UP),
        ("majority", [UP, UP, DOWN], UP),  # one vantage cut off: no failover
        ("majority", [UP, DOWN, DOWN], DOWN),  # two of three: down
        ("majority", [UP, DOWN, UNKNOWN], UNKNOWN),
        ("majority", [DOWN, DOWN, DOWN], DOWN),
        ("majority", [UP, UP, DOWN, DOWN], UNKNOWN),  # 2 of 4 is no majority either way
        ("all", [UP, UP, UP], UP),
        ("all", [UP, UP, DOWN], DOWN),
        ("any", [UP, DOWN, DOWN], UP),
        ("any", [DOWN, DOWN, DOWN], DOWN),
        ("any", [UNKNOWN, DOWN, DOWN], UNKNOWN),
        (2, [UP, UP, DOWN], UP),
        (2, [UP, DOWN, DOWN], DOWN),
        (3, [UP, UP], UP),  # fewer members than k: all of those left
        ("majority", [], UNKNOWN),
    ],
)
def test_vote_by_quorum(quorum: Quorum, statuses: list[Status], expected: Status) -> None:
    voters = members(*({"c": s} for s in statuses))
    result = vote("c", voters, quorum)
    assert result.status is expected
    assert list(result.votes.values()) == statuses


def test_a_member_without_a_verdict_votes_unknown() -> None:
    voters = members({"c": UP}, {"c": UP}, {})
    result = vote("c", voters, "majority")
    assert result.status is UP and result.votes["m2"] is UNKNOWN


def test_since_is_when_the_deciding_member_agreed() -> None:
    voters = members({"c": DOWN}, {"c": DOWN}, {"c": UP})
    assert vote("c", voters, "majority").since == 101.0


@pytest.mark.parametrize(
    ("quorum", "voters", "need"),
    [
        ("majority", 3, 2),
        ("majority", 4, 3),
        ("all", 3, 3),
        ("any", 5, 1),
        (2, 3, 2),
        (5, 3, 3),
        ("majority", 0, 1),
    ],
)
def test_needed(quorum: Quorum, voters: int, need: int) -> None:
    assert needed(quorum, voters) == need


def test_an_isolated_member_is_ignored() -> None:
    # m0 sees everything down (its own network is cut); the others see the primary up.
    views = members(
        {"primary": DOWN, "dr": DOWN},
        {"primary": UP, "dr": UP},
        {"primary": DOWN, "dr": UP},
    )
    votes, cut_off = tally(["primary", "dr"], views, "majority", NOW, WINDOW)
    assert cut_off == {"m0"}
    assert votes["primary"].status is UNKNOWN  # 1 up, 1 down of 2: no majority
    assert votes["dr"].status is UP and "m0" not in votes["dr"].votes


def test_everyone_seeing_everything_down_is_not_isolation() -> None:
    views = members({"primary": DOWN}, {"primary": DOWN}, {"primary": DOWN})
    votes, cut_off = tally(["primary"], views, "majority", NOW, WINDOW)
    assert cut_off == set() and votes["primary"].status is DOWN


def test_stale_members_do_not_vote() -> None:
    views = [
        *members({"c": DOWN}, {"c": DOWN}, seen=NOW - WINDOW - 1),
        MemberView("fresh", NOW, {"c": Verdict(UP, 5.0)}),
    ]
    votes, _ = tally(["c"], views, "majority", NOW, WINDOW)
    assert votes["c"].status is UP and list(votes["c"].votes) == ["fresh"]
