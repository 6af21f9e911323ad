"""The health monitor's combined service health: reused while nothing it shows changed,
redone as soon as something did, whichever way the check's health was set."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.factories import service
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.model import ProbeResult, Status
from trafficflip.runtime.monitor import HealthMonitor


def primary_key(monitor: HealthMonitor) -> str:
    return monitor.services["www"].site_checks["primary"][0]


def probe(monitor: HealthMonitor, key: str, ok: bool, at: float, latency: float = 0.01) -> None:
    monitor.observe(key, ProbeResult(ok, "ok" if ok else "status 503", latency, at))


def test_an_up_checks_latency_leaves_the_combined_health_as_it_was() -> None:
    monitor = HealthMonitor([service()])
    key = primary_key(monitor)
    for at in (1.0, 2.0):
        probe(monitor, key, True, at)
    up = monitor.service_health("www")
    assert up.sites["primary"].status is Status.UP
    probe(monitor, key, True, 3.0, latency=0.2)
    assert monitor.service_health("www") is up


def test_each_failure_of_a_down_check_is_shown_with_its_count() -> None:
    monitor = HealthMonitor([service()])
    key = primary_key(monitor)
    for at in (1.0, 2.0, 3.0):
        probe(monitor, key, False, at)
    assert monitor.service_health("www").sites["primary"].reason.endswith("status 503 x3")
    probe(monitor, key, False, 4.0)
    assert monitor.service_health("www").sites["primary"].reason.endswith("status 503 x4")
    for at in (5.0, 6.0):
        probe(monitor, key, True, at)
    assert monitor.service_health("www").sites["primary"].status is Status.UP


def test_a_verdict_put_from_elsewhere_is_shown() -> None:
    monitor = HealthMonitor([service()])
    key = primary_key(monitor)
    assert monitor.service_health("www").sites["primary"].status is Status.UNKNOWN
    monitor.put(key, CheckHealth(Status.DOWN, since=9.0))  # a cluster's voted verdict
    assert monitor.service_health("www").sites["primary"].status is Status.DOWN
    monitor.put(key, replace(monitor.checks[key], status=Status.UP))
    assert monitor.service_health("www").sites["primary"].status is Status.UP


def test_a_service_rewired_by_a_reload_is_combined_again() -> None:
    monitor = HealthMonitor([service()])
    key = primary_key(monitor)
    for at in (1.0, 2.0):
        probe(monitor, key, True, at)
    assert monitor.service_health("www").sites["primary"].status is Status.UP
    monitor.remove("www")
    moved = service(health={"require": "any", "rise": 3})  # other checks' keys
    monitor.add(moved)
    assert monitor.service_health("www").sites["primary"].status is Status.UNKNOWN


def test_the_checks_can_only_be_changed_through_put() -> None:
    monitor = HealthMonitor([service()])
    with pytest.raises(TypeError):
        monitor.checks[primary_key(monitor)] = CheckHealth()  # type: ignore[index]
