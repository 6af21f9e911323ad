"""Planned moves that respect the TTL, in virtual time: lower it, wait out the old one from
when the provider took the short one, move, restore. Failovers never wait."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_decide import DOWN, DR100, P100, UP, World, service
from tests.test_engine import Rig
from trafficflip.config.loader import load_config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.commands import apply_command
from trafficflip.decision.decide import move_starts_at, next_step_at
from trafficflip.decision.model import ServiceHealth
from trafficflip.errors import ConfigError
from trafficflip.operations.status import phase

OLD, SHORT = 300, 30


def planned_world() -> World:
    svc = service(ttl=OLD, planned={"ttl": SHORT}, failback={"step_duration": OLD})
    world = World(svc)
    world.run([(0, {}, P100)])
    return world


def test_a_pin_lowers_the_ttl_waits_out_the_old_one_then_moves_and_restores_it() -> None:
    world = planned_world()
    world.state, _ = apply_command(world.service, world.state, "failover", {"to": "dr"})
    assert world.step(10, applied=False) == P100  # nothing moves yet
    assert world.state.ttl == SHORT and world.events[-1] == "ttl_lowering"
    assert phase(world.service, world.state, None, None).name == "lowering TTL"
    world.step(12)  # the provider took the short TTL at 12: the old one runs out at 312
    assert move_starts_at(world.service, world.state) == 12 + OLD
    assert next_step_at(world.service, world.state, ServiceHealth(world.health)) == 12 + OLD
    detail = phase(world.service, world.state, None, None, at_text=lambda t: f"t={t:g}").detail
    assert detail == "TTL 30s before the planned move; it starts at t=312"
    assert world.step(311) == P100
    assert world.step(312) == {"primary": 90, "dr": 10}
    assert world.events[-1] == "planned_move_started" and world.state.ttl == SHORT
    world.step(612), world.step(912)
    assert world.step(1212) == DR100
    # The move is complete: the TTL goes back in the same write as the last step.
    assert world.events[-2:] == ["planned_move_completed", "ttl_restored"]
    assert world.state.ttl is None


def test_a_drain_waits_for_the_short_ttl_too() -> None:
    world = planned_world()
    world.state, _ = apply_command(world.service, world.state, "drain", {"site": "primary"})
    world.step(1)
    assert world.step(1 + OLD - 1) == P100 and world.state.ttl == SHORT
    assert world.step(1 + OLD) == {"primary": 90, "dr": 10}
    assert world.events[-1] == "drain_started"


def test_the_wait_counts_from_when_the_provider_took_the_short_ttl() -> None:
    world = planned_world()
    world.state, _ = apply_command(world.service, world.state, "failover", {"to": "dr"})
    world.step(1, applied=False)
    world.step(200, applied=False)  # the provider is down: the short TTL is not out yet
    assert world.step(400, applied=False) == P100
    world.step(500)  # taken at 500
    assert world.step(799) == P100
    assert world.step(800) == {"primary": 90, "dr": 10}


def test_a_failover_during_the_wait_does_not_wait() -> None:
    world = planned_world()
    world.state, _ = apply_command(world.service, world.state, "failover", {"to": "dr"})
    world.step(1)
    world.set(20, primary=DOWN)
    assert world.step(20) == DR100  # at once
    assert "failover" in world.events
    # Nothing is moving any more: the TTL goes back.
    assert world.state.ttl is None and world.events[-1] == "ttl_restored"


def test_a_released_pin_restores_the_ttl_without_moving() -> None:
    world = planned_world()
    world.state, _ = apply_command(world.service, world.state, "failover", {"to": "dr"})
    world.step(1)
    world.state, _ = apply_command(world.service, world.state, "failback", {})
    assert world.step(2) == P100
    assert world.state.ttl is None and world.events[-1] == "ttl_restored"


def test_failback_is_unplanned_and_does_not_lower_the_ttl() -> None:
    world = planned_world()
    world.set(10, primary=DOWN)
    assert world.step(10) == DR100
    world.set(20, primary=UP)
    world.step(200)
    assert world.state.ramp is not None and world.state.ttl is None
    assert "ttl_lowering" not in world.events


async def test_the_engine_writes_the_short_ttl_then_journals_when_the_move_starts() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    engine = rig.engine
    planned = {**engine.services["www"].config.model_dump(), "ttl": 60, "planned": {"ttl": 5}}
    engine.reload([ServiceConfig.model_validate(planned)], engine.providers)
    rig.probe("primary", True), rig.probe("dr", True)  # the reloaded checks start again
    await rig.settle()
    assert {a.ttl for a in rig.provider.answers["www"].values()} == {60}  # the new ttl
    assert "drift" not in {e.kind for e in rig.store.journal("www")}  # our change, not drift
    engine.execute("www", "failover", {"to": "dr"}, "test")
    await rig.settle()
    ttls = {a.ttl for a in rig.provider.answers["www"].values()}
    assert ttls == {5} and rig.provider.weights("www") == {"primary": 100, "dr": 0}
    (lowered,) = [e for e in rig.store.journal("www") if e.kind == "ttl_lowered"]
    assert (
        "move starts at" in lowered.message
        and "once the 60s answers have expired" in lowered.message
    )
    rig.now += 59
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}
    rig.now += 1
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 50, "dr": 50}
    for _ in range(3):
        rig.now += 2
        await rig.tick()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
    assert {a.ttl for a in rig.provider.answers["www"].values()} == {60}


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"ttl": 30, "planned": {"ttl": 30}}, "planned.ttl: 30s must be lower than the ttl (30s)"),
        ({"planned": {"ttl": 0}}, "planned.ttl"),
    ],
)
def test_bad_planned_settings_are_config_errors(overrides: dict[str, Any], problem: str) -> None:
    data = {
        "providers": {"aws": {"type": "route53"}},
        "services": [
            {**service().model_dump(mode="json", exclude={"planned", "maintenance"}), **overrides}
        ],
    }
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    assert problem in str(raised.value), str(raised.value)
