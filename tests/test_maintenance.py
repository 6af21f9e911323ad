"""Maintenance that ends by itself, in virtual time: wall-clock expiries of hold, pin, drain."""

from __future__ import annotations

import time

import pytest

from tests.test_decide import DOWN, DR100, P100, World, service
from tests.test_engine import Rig
from tests.test_operator_api import AUTH, client
from trafficflip import cli
from trafficflip.decision.commands import apply_command
from trafficflip.decision.maintenance import end_expired, next_expiry
from trafficflip.decision.model import Expiry, ServiceState
from trafficflip.errors import CommandError
from trafficflip.runtime import engine as engine_module
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.state import state_from_json, state_to_json

WALL = 1_800_000_000.0  # an epoch second; the monotonic clock of World starts at 0


def end(world: World, wall: float) -> list[str]:
    ended = end_expired(world.state, wall)
    world.state = ended.state
    return [e.message for e in ended.events]


def test_a_drain_for_a_duration_ends_and_traffic_returns_through_the_ramp() -> None:
    svc = service(failback={"mode": "manual"})
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, event = apply_command(
        svc, world.state, "drain", {"site": "primary", "for": "30m"}, wall=WALL
    )
    assert "ends at 2027-01-15 08:30:00Z" in event.message
    world.step(1), world.step(61)
    assert world.step(121) == DR100
    assert end(world, WALL + 1799) == [] and world.step(2000) == DR100  # not yet
    assert end(world, WALL + 1800) == ["drain primary ended as scheduled at 2027-01-15 08:30:00Z"]
    assert world.state.expiries == ()
    # Manual failback mode: the end approves failback as the failback command does, and the
    # traffic goes back along the steps, not at once.
    assert world.step(2001) == {"primary": 10, "dr": 90}
    assert world.events[-1] == "failback_started"


def test_a_pin_until_a_time_ends_and_waits_for_the_failback_gates() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    until = "2027-01-15T09:30:00+01:00"  # WALL + 1800, written with an offset
    world.state, _ = apply_command(
        svc, world.state, "failover", {"to": "dr", "until": until}, wall=WALL
    )
    world.step(1), world.step(61)
    assert world.step(121) == DR100
    assert end(world, WALL + 1800) == ["failover dr ended as scheduled at 2027-01-15 08:30:00Z"]
    assert world.state.pinned is None
    assert world.step(2000, gates=DOWN) == DR100  # the failback gates still decide
    assert world.step(2001) == {"primary": 10, "dr": 90}


def test_an_expiring_hold_is_released() -> None:
    svc = service()
    world = World(svc)
    world.run([(0, {}, P100)])
    world.state, _ = apply_command(svc, world.state, "hold", {"for": 60}, wall=WALL)
    world.run([(5, {"primary": DOWN}, P100)])  # held: nothing moves
    assert end(world, WALL + 60) == ["hold ended as scheduled at 2027-01-15 08:01:00Z"]
    assert world.step(6) == DR100


def test_maintenance_ended_by_hand_leaves_no_expiry_behind() -> None:
    svc = service()
    state, _ = apply_command(svc, ServiceState(), "hold", {"for": "1h"}, wall=WALL)
    assert next_expiry(state) == WALL + 3600
    state, _ = apply_command(svc, state, "release", {})
    assert state.expiries == ()
    # The same command again without an end makes the maintenance permanent.
    state, _ = apply_command(svc, state, "drain", {"site": "dr", "for": "1h"}, wall=WALL)
    state, _ = apply_command(svc, state, "drain", {"site": "dr"}, wall=WALL)
    assert state.expiries == () and state.drained == ("dr",)
    # A hold released by hand and taken again later is not ended by the old expiry.
    state, _ = apply_command(svc, state, "failover", {"to": "dr", "for": "1h"}, wall=WALL)
    state, _ = apply_command(svc, state, "failback", {})
    assert end_expired(state, WALL + 3600).events == ()


@pytest.mark.parametrize(
    ("name", "args", "problem"),
    [
        ("release", {"for": "1h"}, "release takes no for/until"),
        ("hold", {"for": "1h", "until": WALL + 10}, "not both"),
        ("hold", {"for": "soon"}, "for: invalid duration 'soon'"),
        ("hold", {"for": 0}, "must be longer than 0s"),
        ("hold", {"until": WALL - 1}, "is not in the future"),
        ("hold", {"until": -1.8e16}, "is not in the future"),  # found by schemathesis: was a 500
        ("hold", {"until": WALL * 1000}, "is more than 366d ahead"),
        ("hold", {"for": "9000h"}, "at most 366d"),
        ("hold", {"until": "14:00"}, "ISO 8601 time with an offset"),
        ("hold", {"until": "2027-01-15T09:00:00"}, "ISO 8601 time with an offset"),
    ],
)
def test_unusable_ends_are_refused(name: str, args: dict[str, object], problem: str) -> None:
    with pytest.raises(CommandError, match=problem):
        apply_command(service(), ServiceState(), name, args, wall=WALL)


def test_expiries_survive_the_store_and_old_states_still_load() -> None:
    state = ServiceState(drained=("primary",), expiries=(Expiry("drain", "primary", WALL),))
    assert state_from_json(state_to_json(state)) == state
    assert state_from_json('{"members": ["primary"]}').expiries == ()


async def test_the_engine_ends_a_drain_on_the_wall_clock_journals_it_and_ramps_back() -> None:

    rig = Rig()
    # The wall clock runs far from the monotonic one: expiries must be read on the wall.
    rig.engine.clock = rig.engine.journal.clock = Clock(lambda: rig.now, lambda: rig.now + WALL)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.store.submit("www", "drain", {"site": "primary", "for": "10m"}, "cli")
    await rig.tick()
    for _ in range(3):
        rig.now += 1
        await rig.tick()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
    rig.now = 1599  # the drain was taken at 1000, for 600 s
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
    rig.now = 1600
    await rig.tick()
    ended = [e for e in rig.store.journal("www") if e.kind == "maintenance_ended"]
    assert [e.message for e in ended] == [
        "drain primary ended as scheduled at 2027-01-15 08:26:40Z"
    ]
    assert rig.provider.weights("www") == {"primary": 50, "dr": 50}  # the first step
    assert rig.store.load("www") is not None and rig.store.load("www").expiries == ()  # type: ignore[union-attr]


async def test_the_api_takes_an_end_and_shows_what_is_scheduled() -> None:

    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    api = client(rig)
    body = {"site": "primary", "for": "30m", "reason": "patching"}
    response = await api.post("/api/v1/services/www/drain", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    view = response.json()["service"]
    assert view["maintenance"] == [{"command": "drain", "site": "primary", "until": rig.now + 1800}]
    assert "drain primary ends at " in view["detail"]
    refused = await api.post("/api/v1/services/www/release", json={"for": "1h"}, headers=AUTH)
    assert refused.status_code == 409 and "release takes no for/until" in refused.text


def test_the_cli_refuses_an_end_in_the_past_before_sending(
    capsys: pytest.CaptureFixture[str],
) -> None:

    code = cli.main(
        ["hold", "www", "--until", "2001-01-01T00:00:00+00:00", "--api", "http://127.0.0.1:9"]
    )
    assert code == 2 and "is not in the future" in capsys.readouterr().err
    assert cli.maintenance_end("30m", None) == {"for": "30m"}
    until = cli.maintenance_end(None, "2030-01-01T00:00:00+00:00")
    assert until == {"until": 1893456000.0}
    hhmm = cli.maintenance_end(None, "00:00")["until"]

    assert isinstance(hhmm, float) and 0 < hhmm - time.time() <= 86400


async def test_a_large_fleet_is_gone_through_over_several_ticks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each tick visits at most TICK_SERVICES services, in turn: with 2 a tick and 5 services,
    # every drain due has ended after three ticks, and none before its turn.
    monkeypatch.setattr(engine_module, "TICK_SERVICES", 2)
    rig = Rig(services=5)
    names = list(rig.engine.services)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    for name in names:
        rig.store.submit(name, "drain", {"site": "primary", "for": "10m"}, "cli")
    rig.engine.take_commands()
    await rig.settle()
    rig.now += 600

    def ended() -> set[str]:
        return {n for n in names if not rig.engine.states[n].expiries}

    turns = []
    for _ in range(3):
        await rig.tick()
        turns.append(len(ended()))
    assert turns == [2, 4, 5]
