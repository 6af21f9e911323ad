"""The decision core in virtual time: each scenario is (time, site health, expected shares)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests import factories
from tests.factories import DR_TARGET, PRIMARY_TARGET
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.commands import apply_command
from trafficflip.decision.decide import decide, fit_to_config
from trafficflip.decision.model import ServiceHealth, ServiceState, SiteHealth, Status

UP, DOWN, UNKNOWN = Status.UP, Status.DOWN, Status.UNKNOWN


def service(**overrides: Any) -> ServiceConfig:
    return factories.service(**overrides)


def three_sites(**overrides: Any) -> ServiceConfig:
    sites = [
        {
            "name": name,
            "targets": [f"192.0.2.{i}"],
            "weight": weight,
            "checks": [{"type": "tcp", "address": f"127.0.0.1:{i}"}],
        }
        for i, (name, weight) in enumerate([("a", 1), ("b", 1), ("c", 2)], start=1)
    ]
    return service(sites=sites, **overrides)


class World:
    """Virtual time and health: a site's ``since`` is when it entered its status."""

    def __init__(self, svc: ServiceConfig, state: ServiceState | None = None) -> None:
        self.service = svc
        self.state = state or ServiceState()
        # Up long before the scenario starts.
        self.health = {s.name: SiteHealth(UP, -1e6) for s in svc.sites}
        self.events: list[str] = []

    def set(self, now: float, **statuses: Status) -> None:
        for site, status in statuses.items():
            if self.health[site].status is not status:
                self.health[site] = SiteHealth(
                    status, now, "status 503 x3" if status is DOWN else ""
                )

    def step(
        self, now: float, *, gates: Status = UP, started: bool = True, applied: bool = True
    ) -> dict[str, int] | None:
        health = ServiceHealth(dict(self.health), gates)
        decision = decide(self.service, self.state, health, now, started=started)
        self.events += [e.kind for e in decision.events]
        self.state = decision.state
        if applied and self.state.shares is not None and self.state.applied_at is None:
            self.state = replace(self.state, applied_at=now)  # the provider confirmed it
        return self.state.shares

    def run(self, timeline: list[tuple[float, dict[str, Status], dict[str, int] | None]]) -> None:
        for now, statuses, expected in timeline:
            self.set(now, **statuses)
            assert self.step(now) == expected, f"at t={now}: events {self.events}"


P100 = {"primary": 100, "dr": 0}
DR100 = {"primary": 0, "dr": 100}


def test_start_up_makes_no_change_until_every_site_finished_its_rise_probes() -> None:
    world = World(service())
    world.set(0, primary=UNKNOWN)
    assert world.step(0, started=False) is None
    assert world.state == ServiceState()
    world.set(1, primary=UP)
    assert world.step(1) == P100
    assert world.events == ["initial"]


def test_start_up_serves_the_first_healthy_site_when_the_primary_is_down() -> None:
    world = World(service())
    world.set(0, primary=DOWN)
    assert world.step(0) == DR100


def test_unknown_serving_site_is_not_failed_away_from() -> None:
    world = World(service(), ServiceState(members=("primary",), shares=P100, applied_at=0))
    world.set(5, primary=UNKNOWN)
    assert world.step(5) == P100
    assert world.events == []


@pytest.mark.parametrize(
    ("name", "timeline", "events"),
    [
        (
            "failover at once, failback after stabilize along the steps",
            [
                (0, {}, P100),
                (10, {"primary": DOWN}, DR100),
                (20, {"primary": UP}, DR100),
                (139, {}, DR100),
                (140, {}, {"primary": 10, "dr": 90}),
                (199, {}, {"primary": 10, "dr": 90}),
                (200, {}, {"primary": 50, "dr": 50}),
                (260, {}, P100),
            ],
            ["initial", "failover", "failback_started", "ramp_step", "failback_completed"],
        ),
        (
            "abort during the ramp goes straight back, and stabilize starts over",
            [
                (0, {}, P100),
                (10, {"primary": DOWN}, DR100),
                (20, {"primary": UP}, DR100),
                (140, {}, {"primary": 10, "dr": 90}),
                (150, {"primary": DOWN}, DR100),
                (160, {"primary": UP}, DR100),
                (279, {}, DR100),
                (280, {}, {"primary": 10, "dr": 90}),
            ],
            ["initial", "failover", "failback_started", "failback_aborted", "failback_started"],
        ),
        (
            "a flapping primary never gets traffic back",
            [
                (0, {}, P100),
                (10, {"primary": DOWN}, DR100),
                (20, {"primary": UP}, DR100),
                (100, {"primary": DOWN}, DR100),
                (110, {"primary": UP}, DR100),
                (200, {"primary": DOWN}, DR100),
            ],
            ["initial", "failover"],
        ),
        (
            "the standby failing during the ramp sends everything to the primary",
            [
                (0, {}, P100),
                (10, {"primary": DOWN}, DR100),
                (20, {"primary": UP}, DR100),
                (140, {}, {"primary": 10, "dr": 90}),
                (150, {"dr": DOWN}, P100),
            ],
            ["initial", "failover", "failback_started", "failover"],
        ),
    ],
)
def test_active_passive(name: str, timeline: Any, events: list[str]) -> None:
    world = World(service())
    world.run(timeline)
    assert world.events == events, name


def test_ramp_step_is_held_from_when_the_provider_applied_it() -> None:
    world = World(service(), ServiceState(members=("dr",), shares=DR100, applied_at=0))
    world.set(0, primary=UP)
    world.health["primary"] = SiteHealth(UP, 0.0)
    world.step(120, applied=False)
    assert world.state.shares == {"primary": 10, "dr": 90}
    # Not applied yet (a provider outage): the step is never left, however long it takes.
    assert world.step(500, applied=False) == {"primary": 10, "dr": 90}
    world.state = replace(world.state, applied_at=500)
    assert world.step(559) == {"primary": 10, "dr": 90}
    assert world.step(560) == {"primary": 50, "dr": 50}


def test_gates_hold_the_failback() -> None:
    world = World(service(), ServiceState(members=("dr",), shares=DR100, applied_at=0))
    assert world.step(500, gates=DOWN) == DR100
    assert world.step(501, gates=UP) == {"primary": 10, "dr": 90}


def test_manual_failback_waits_for_the_operator() -> None:
    svc = service(failback={"mode": "manual"})
    world = World(svc, ServiceState(members=("dr",), shares=DR100, applied_at=0))
    assert world.step(10_000) == DR100
    world.state, _ = apply_command(svc, world.state, "failback", {})
    assert world.step(10_001) == {"primary": 10, "dr": 90}
    world.step(10_061)
    assert world.step(10_121) == P100
    assert world.state.failback_approved is False  # the next failback needs a new approval


@pytest.mark.parametrize(
    ("policy", "expected"), [("keep", DR100), ("all", {"primary": 50, "dr": 50})]
)
def test_all_down_never_empties_the_answer(policy: str, expected: dict[str, int]) -> None:
    world = World(service(all_down=policy))
    world.run([(0, {}, P100), (10, {"primary": DOWN}, DR100)])
    world.set(20, dr=DOWN)
    assert world.step(20) == expected
    assert world.events[-1] == "all_down"
    world.set(30, dr=UP)
    assert world.step(30) == DR100
    assert world.events[-1] == "recovered"


def test_all_down_all_is_a_change_to_write() -> None:
    """Regression: the shares of ``all_down: all`` were decided with the previous write's
    ``applied_at`` kept, so the sync took them as written and nothing reached the provider."""
    world = World(service(all_down="all"))
    world.run([(0, {}, P100), (10, {"primary": DOWN}, DR100)])
    assert world.state.applied_at is not None
    world.set(20, dr=DOWN)
    health = ServiceHealth(dict(world.health), UP)
    decision = decide(world.service, world.state, health, 20)
    assert decision.state.shares == {"primary": 50, "dr": 50}
    assert decision.state.applied_at is None


def test_a_failover_to_nothing_says_what_the_policy_serves() -> None:
    for policy, says in [("all", "-> every site (all_down=all)"), ("keep", "last answers stay")]:
        world = World(service(all_down=policy))
        world.run([(0, {}, P100)])
        world.set(10, primary=DOWN, dr=DOWN)
        health = ServiceHealth(dict(world.health), UP)
        events = decide(world.service, world.state, health, 10).events
        assert says in events[0].message, events
        assert "-> nothing" not in events[0].message


def test_all_down_from_the_start_decides_nothing() -> None:
    world = World(service())
    world.set(0, primary=DOWN, dr=DOWN)
    assert world.step(0) is None
    assert world.events == ["all_down"]


def test_active_active_redistributes_and_ramps_a_returning_site() -> None:
    world = World(three_sites(mode="active-active"))
    world.run(
        [
            (0, {}, {"a": 25, "b": 25, "c": 50}),
            (10, {"c": DOWN}, {"a": 50, "b": 50, "c": 0}),
            (20, {"c": UP}, {"a": 50, "b": 50, "c": 0}),
            # c returns at 10 % of its normal share (50 %): 5 %.
            (140, {}, {"a": 48, "b": 47, "c": 5}),
            (200, {}, {"a": 38, "b": 37, "c": 25}),
            (260, {}, {"a": 25, "b": 25, "c": 50}),
        ]
    )
    assert world.events == [
        "initial",
        "site_out",
        "failback_started",
        "ramp_step",
        "failback_completed",
    ]


def test_active_active_other_site_lost_during_ramp() -> None:
    world = World(three_sites(mode="active-active"))
    world.run(
        [
            (0, {}, {"a": 25, "b": 25, "c": 50}),
            (10, {"c": DOWN}, {"a": 50, "b": 50, "c": 0}),
            (20, {"c": UP}, {"a": 50, "b": 50, "c": 0}),
            (140, {}, {"a": 48, "b": 47, "c": 5}),
        ]
    )
    world.set(150, a=DOWN)
    # c keeps 10 % of its normal share, which is now two thirds: 7 %.
    assert world.step(150) == {"a": 0, "b": 93, "c": 7}
    assert world.state.ramp is not None and world.state.ramp.to == ("b", "c")


def test_operator_failover_moves_along_the_steps_and_failback_releases() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, _ = apply_command(svc, world.state, "failover", {"to": "dr"})
    assert world.step(1) == {"primary": 90, "dr": 10}  # no stabilize for an operator's move
    world.step(61)
    assert world.step(121) == DR100
    assert world.step(10_000) == DR100  # pinned: no automatic failback
    world.state, _ = apply_command(svc, world.state, "failback", {})
    assert world.step(10_001) == {"primary": 10, "dr": 90}
    # An operator's move is named as one, not counted as a failback.
    assert world.events[1:4] == ["planned_move_started", "ramp_step", "planned_move_completed"]
    assert world.events[4] == "failback_started"


def test_a_pin_to_a_down_site_waits_for_stabilize_once_it_is_back() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100), (5, {"dr": DOWN}, P100)])
    world.state, _ = apply_command(svc, world.state, "failover", {"to": "dr"})
    assert world.step(10) == P100  # accepted, but nothing moves onto a dead site
    world.set(20, dr=UP)
    assert world.step(21) == P100
    assert world.step(139) == P100  # up for less than stabilize (120 s)
    assert world.step(140) == {"primary": 90, "dr": 10}
    assert world.events[-1] == "planned_move_started"


def test_a_drain_is_named_as_a_drain() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, _ = apply_command(svc, world.state, "drain", {"site": "primary"})
    world.step(1), world.step(61), world.step(121)
    assert world.events[1:] == ["drain_started", "ramp_step", "drain_completed"]


def test_a_stored_state_meets_a_renamed_site() -> None:
    """dr renamed to backup while it served: no ramp from a site that is gone, no error."""
    renamed = service(
        sites=[factories.site("primary", PRIMARY_TARGET, 1), factories.site("backup", DR_TARGET, 2)]
    )
    stored = ServiceState(members=("dr",), shares={"primary": 0, "dr": 100}, applied_at=5)
    fitted = fit_to_config(renamed, stored)
    assert fitted.state.members == () and fitted.state.shares is None
    assert [e.kind for e in fitted.events] == ["site_removed"]
    world = World(renamed, fitted.state)
    world.set(100, primary=DOWN)
    assert world.step(100) == {"primary": 0, "backup": 100}  # at once, no ramp
    assert world.state.ramp is None


def test_pinned_site_failing_still_fails_over() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, _ = apply_command(svc, world.state, "failover", {"to": "dr"})
    world.step(1), world.step(61), world.step(121)
    world.set(130, dr=DOWN)
    assert world.step(130) == P100


def test_drain_moves_traffic_away_and_promote_changes_the_order() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, _ = apply_command(svc, world.state, "drain", {"site": "primary"})
    assert world.step(1) == {"primary": 90, "dr": 10}
    world.step(61), world.step(121)
    assert world.state.members == ("dr",)
    world.state, _ = apply_command(svc, world.state, "promote", {"site": "dr"})
    assert world.step(10_000) == DR100  # dr is now the primary: nothing to fail back to
    world.set(10_010, dr=DOWN)
    assert world.step(10_010) == P100


def test_hold_freezes_every_automatic_change() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, _ = apply_command(svc, world.state, "hold", {})
    world.set(10, primary=DOWN)
    assert world.step(10) == P100
    world.state, _ = apply_command(svc, world.state, "release", {})
    assert world.step(11) == DR100


def test_resumes_a_ramp_after_restart_without_repeating_or_jumping() -> None:
    svc = service()
    world = World(svc)
    world.run(
        [
            (0, {}, P100),
            (10, {"primary": DOWN}, DR100),
            (20, {"primary": UP}, DR100),
            (140, {}, {"primary": 10, "dr": 90}),
            (200, {}, {"primary": 50, "dr": 50}),
        ]
    )
    stored = world.state
    # A new process: fresh health (primary up since its first probes), the stored state.
    restarted = World(svc, stored)
    restarted.set(230, primary=UP)
    restarted.health["primary"] = SiteHealth(UP, 230)
    assert restarted.step(229, started=False) == {"primary": 50, "dr": 50}
    assert restarted.step(230) == {"primary": 50, "dr": 50}
    # The step's hold is over, but the primary was seen up again only at 230: stabilize is
    # checked again before the ramp moves on.
    assert restarted.step(260) == {"primary": 50, "dr": 50}
    assert restarted.step(349) == {"primary": 50, "dr": 50}
    assert restarted.step(350) == P100
    assert restarted.events == ["failback_completed"]


def test_single_step_failback_is_a_switch() -> None:
    world = World(service(failback={"steps": [100]}))
    world.run(
        [
            (0, {}, P100),
            (10, {"primary": DOWN}, DR100),
            (20, {"primary": UP}, DR100),
            (140, {}, P100),
        ]
    )
