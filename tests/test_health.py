from __future__ import annotations

from dataclasses import replace

from trafficflip.decision.health import CheckHealth, observe, site_health
from trafficflip.decision.model import ProbeResult, Status

OK = ProbeResult(True, "ok", 0.001, 0)
FAIL = ProbeResult(False, "status 503", 0.001, 0)


def feed(results: list[ProbeResult], *, rise: int = 2, fall: int = 3) -> list[Status]:
    health = CheckHealth()
    statuses = []
    for at, result in enumerate(results):
        health = observe(health, replace(result, at=at), rise=rise, fall=fall)
        statuses.append(health.status)
    return statuses


def test_rise_and_fall_need_consecutive_results() -> None:
    U, D, N = Status.UP, Status.DOWN, Status.UNKNOWN
    assert feed([OK, OK, FAIL, FAIL, OK, FAIL, FAIL, FAIL]) == [N, U, U, U, U, U, U, D]
    assert feed([FAIL, FAIL, FAIL, OK, FAIL, OK, OK]) == [N, N, D, D, D, D, U]


def test_one_probe_flips_only_with_thresholds_of_one() -> None:
    assert feed([OK, FAIL, OK], rise=1, fall=1) == [Status.UP, Status.DOWN, Status.UP]


def test_reason_counts_the_streak_and_since_is_the_flip_time() -> None:
    health = CheckHealth()
    for at in range(3):
        health = observe(health, ProbeResult(False, "status 503", 0.0, 10 + at), rise=2, fall=3)
    assert health.reason == "status 503 x3"
    assert health.since == 12


def test_settled_after_rise_probes_even_when_unknown() -> None:
    health = CheckHealth()
    health = observe(health, FAIL, rise=2, fall=3)
    assert not health.settled(2)
    health = observe(health, OK, rise=2, fall=3)
    assert health.settled(2) and health.status is Status.UNKNOWN


def test_site_health_all_and_any() -> None:
    up = CheckHealth(Status.UP, since=5)
    down = CheckHealth(Status.DOWN, since=7, last=FAIL, streak=3, streak_ok=False)
    unknown = CheckHealth()
    assert site_health([up, down]).status is Status.DOWN
    assert site_health([up, down]).reason == "status 503 x3"
    assert site_health([up, down], "any").status is Status.UP
    assert site_health([up, unknown]).status is Status.UNKNOWN
    assert site_health([up, up]).status is Status.UP
    assert site_health([down, down], "any").status is Status.DOWN


def test_inconclusive_results_count_neither_way() -> None:
    unsure = ProbeResult(False, "inconclusive: prober overloaded", 0.3, 0, inconclusive=True)
    assert feed([OK, OK, FAIL, unsure, unsure, FAIL]) == [
        Status.UNKNOWN,
        Status.UP,
        Status.UP,
        Status.UP,
        Status.UP,
        Status.UP,
    ]
