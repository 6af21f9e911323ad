"""Maintenance windows from the config, in virtual time: a site drained for the window (once
per occurrence, by APScheduler's triggers), released after it through the failback ramp."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_decide import DR100, P100, World, service
from tests.test_engine import config
from trafficflip.backend.testing import MemoryProvider
from trafficflip.config.loader import load_config
from trafficflip.decision.commands import apply_command
from trafficflip.decision.maintenance import begin_windows, end_expired, next_window, open_window
from trafficflip.decision.model import ProbeResult
from trafficflip.errors import ConfigError
from trafficflip.operations.views import windows_view
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import SqliteStateStore, state_from_json, state_to_json

WALL = 1_800_000_000.0  # Friday 2027-01-15 08:00:00Z
HOUR = 3600.0
WEEKLY = {"site": "primary", "every": "0 9 * * fri", "duration": "1h"}  # Fridays 09:00-10:00Z


def with_windows(*windows: dict[str, Any]) -> World:
    world = World(service(maintenance=list(windows)))
    world.run([(0, {}, P100)])
    return world


def maintain(world: World, wall: float) -> list[str]:
    """What the engine does each tick on the wall clock: windows begin, expiries end."""
    begun = begin_windows(world.service, world.state, wall)
    ended = end_expired(begun.state, wall)
    world.state = ended.state
    return [e.message for e in (*begun.events, *ended.events)]


def test_a_weekly_window_drains_the_site_for_its_hour_and_releases_it_through_the_ramp() -> None:
    world = with_windows(WEEKLY)
    assert maintain(world, WALL + HOUR - 1) == []  # 08:59:59: not yet
    assert maintain(world, WALL + HOUR) == [
        "maintenance window drains primary until 2027-01-15 10:00:00Z"
    ]
    assert world.state.drained == ("primary",)
    # The drain moves the traffic along the steps, as an operator's drain does.
    assert world.step(10) == {"primary": 90, "dr": 10}
    world.step(70), world.step(130)
    assert world.step(190) == DR100
    assert maintain(world, WALL + 1.5 * HOUR) == []  # within the window: nothing more
    assert maintain(world, WALL + 2 * HOUR) == [
        "drain primary ended as scheduled at 2027-01-15 10:00:00Z"
    ]
    assert world.state.drained == () and world.state.expiries == ()
    assert world.step(200) == {"primary": 10, "dr": 90}  # back along the steps
    assert world.events[-1] == "failback_started"
    # A week later the same window opens again.
    assert maintain(world, WALL + HOUR + 7 * 86400) == [
        "maintenance window drains primary until 2027-01-22 10:00:00Z"
    ]


def test_a_window_drains_once_so_an_operator_may_end_it_early() -> None:
    world = with_windows(WEEKLY)
    maintain(world, WALL + HOUR)
    world.state, _ = apply_command(world.service, world.state, "failback", {})
    assert world.state.drained == ()
    assert maintain(world, WALL + HOUR + 60) == []  # the same occurrence is not drained again
    assert world.state.drained == ()


def test_an_operators_drain_without_an_end_is_left_alone() -> None:
    world = with_windows(WEEKLY)
    world.state, _ = apply_command(world.service, world.state, "drain", {"site": "primary"})
    assert maintain(world, WALL + HOUR) == []
    assert world.state.expiries == ()  # still permanent: the window does not end it
    assert maintain(world, WALL + 2 * HOUR) == [] and world.state.drained == ("primary",)


def test_a_one_off_window_and_an_interval_window() -> None:
    once = {"site": "dr", "start": "2027-01-15T08:30:00Z", "duration": "10m"}
    twice_a_day = {
        "site": "primary",
        "start": "2027-01-15T06:00:00Z",
        "every": "12h",
        "duration": "30m",
    }
    world = with_windows(once, twice_a_day)
    assert maintain(world, WALL) == []
    assert maintain(world, WALL + 1800) == [
        "maintenance window drains dr until 2027-01-15 08:40:00Z"
    ]
    assert maintain(world, WALL + 2400) == ["drain dr ended as scheduled at 2027-01-15 08:40:00Z"]
    assert maintain(world, WALL + 10 * HOUR) == [
        "maintenance window drains primary until 2027-01-15 18:30:00Z"
    ]
    assert maintain(world, WALL + 20 * HOUR) == [
        "drain primary ended as scheduled at 2027-01-15 18:30:00Z"
    ]
    assert maintain(world, WALL + 40 * HOUR) == []  # the one-off window never comes back


def test_a_restart_mid_window_does_not_drain_again() -> None:
    world = with_windows(WEEKLY)
    maintain(world, WALL + HOUR)
    world.state, _ = apply_command(world.service, world.state, "failback", {})
    world.state = state_from_json(state_to_json(world.state))
    assert maintain(world, WALL + HOUR + 1) == []


def test_open_and_next_occurrences_and_the_view() -> None:
    svc = service(maintenance=[WEEKLY])
    window = svc.maintenance[0]
    assert open_window(window, WALL) is None
    assert next_window(window, WALL) == (WALL + HOUR, WALL + 2 * HOUR)
    assert open_window(window, WALL + HOUR) == (WALL + HOUR, WALL + 2 * HOUR)
    assert open_window(window, WALL + 2 * HOUR) is None  # the end belongs to no window
    (view,) = windows_view(svc, WALL + 1.5 * HOUR)
    assert (view.site, view.start, view.end, view.open) == (
        "primary",
        WALL + HOUR,
        WALL + 2 * HOUR,
        True,
    )
    (view,) = windows_view(svc, WALL + 2 * HOUR)
    assert (view.start, view.open, view.every) == (WALL + HOUR + 7 * 86400, False, "0 9 * * fri")


def test_a_window_in_a_time_zone() -> None:
    local = {**WEEKLY, "every": "0 10 * * fri", "timezone": "Europe/Paris"}  # 09:00Z in winter
    svc = service(maintenance=[local])
    assert open_window(svc.maintenance[0], WALL + HOUR) == (WALL + HOUR, WALL + 2 * HOUR)


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ({**WEEKLY, "site": "nowhere"}, "maintenance[0].site: no site 'nowhere'"),
        ({**WEEKLY, "every": "0 9 * * 5"}, "name the days of the week"),
        ({**WEEKLY, "every": "0 25 * * fri"}, "every: '0 25 * * fri'"),
        ({"site": "dr", "duration": "1h"}, "start: required unless every is a crontab"),
        ({"site": "dr", "start": "2027-01-15T09:00:00", "duration": "1h"}, "needs an offset"),
        (
            {"site": "dr", "start": "2027-01-15T09:00:00Z", "duration": "2h", "every": "1h"},
            "must be longer than the duration",
        ),
        ({**WEEKLY, "duration": "0s"}, "must be longer than 0s"),
        ({**WEEKLY, "timezone": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_bad_windows_are_config_errors_naming_the_key(window: dict[str, Any], problem: str) -> None:
    data = {
        "providers": {"aws": {"type": "route53"}},
        "services": [
            {
                **service(maintenance=[]).model_dump(
                    mode="json", exclude={"maintenance", "planned"}
                ),
                "maintenance": [window],
            }
        ],
    }
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    text = str(raised.value)
    assert "services[0].maintenance[0]" in text and problem in text, text


async def test_a_preview_shows_the_window_open_now() -> None:
    loaded = config()
    window = {"site": "primary", "start": "1970-01-01T00:10:00Z", "duration": "1h"}
    (svc,) = loaded.services
    svc = type(svc).model_validate({**svc.model_dump(), "maintenance": [window]})
    clock = Clock(monotonic=lambda: 1000.0, wall=lambda: 1000.0)  # 00:16:40Z: open
    engine = Engine([svc], SqliteStateStore(":memory:"), {"mem": MemoryProvider()}, clock,
                    read_only=True)  # fmt: skip
    for key in engine.jobs:
        for _ in range(2):
            engine.observe(key, ProbeResult(True, "ok", 0.001, 1000.0))
    await engine.converge(list(engine.services), apply=False)
    kinds = [event.kind for _, event in engine.previewed]
    assert "maintenance_started" in kinds and "drain_started" in kinds, kinds
