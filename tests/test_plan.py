from __future__ import annotations

import pytest

from tests.test_decide import service
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import diff, make_plan, render
from trafficflip.errors import UnsafePlanError


def test_render_weighted_and_set_only() -> None:
    svc = service()
    weighted = render(svc, {"primary": 25, "dr": 75}, weighted=True)
    assert weighted == (
        Answer("primary", frozenset({"192.0.2.10"}), 25, 30),
        Answer("dr", frozenset({"198.51.100.20"}), 75, 30),
    )
    assert render(svc, {"primary": 25, "dr": 75}, weighted=False) == (
        Answer(None, frozenset({"192.0.2.10", "198.51.100.20"}), None, 30),
    )
    assert render(svc, {"primary": 0, "dr": 100}, weighted=False) == (
        Answer(None, frozenset({"198.51.100.20"}), None, 30),
    )


def test_plan_prints_itself_sorted_with_a_summary() -> None:
    svc = service()
    actual = [
        Answer("primary", frozenset({"192.0.2.10"}), 100, 30),
        Answer(None, frozenset({"203.0.113.1"}), None, 300),
    ]
    plan = make_plan(diff(svc, render(svc, {"primary": 0, "dr": 100}, weighted=True), actual))
    assert str(plan).splitlines() == [
        "- www.example.com. A (answer): 203.0.113.1 ttl 300",
        "+ www.example.com. A dr: 198.51.100.20 weight 100 ttl 30",
        "~ www.example.com. A primary: 192.0.2.10 weight 100 ttl 30 -> 192.0.2.10 weight 0 ttl 30",
        "Creates=1, Updates=1, Deletes=1",
    ]
    assert str(make_plan([])) == "No changes"


def test_unknown_sites_are_retired_not_deleted() -> None:
    svc = service()
    actual = [Answer("old-site", frozenset({"203.0.113.7"}), 50, 30)]
    changes = diff(svc, render(svc, {"primary": 100, "dr": 0}, weighted=True), actual)
    retired = [c for c in changes if c.site == "old-site"]
    assert [(c.action, c.after.weight if c.after else None) for c in retired] == [("update", 0)]


@pytest.mark.parametrize("shares", [{"primary": 0, "dr": 0}, {}])
def test_a_plan_that_serves_nothing_is_refused(shares: dict[str, int]) -> None:
    svc = service()
    with pytest.raises(UnsafePlanError):
        diff(svc, render(svc, shares, weighted=True), [])
    with pytest.raises(UnsafePlanError):
        diff(svc, render(svc, shares, weighted=False), [])
