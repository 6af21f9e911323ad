"""A hung probe worker no longer freezes health (issue 22 B5): a check without results turns
unknown after its silence limit and down after a grace (virtual time), and a silent worker
(SIGSTOP) is killed by PID and restarted while ``/readyz`` names it (real workers)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, Deployment
from tests.support import HttpSite, MotoServer, wait_until
from tests.test_engine import Rig, config
from tests.test_probe_workers import Results, alive, wait_for
from trafficflip.config.schema import HealthConfig, HttpCheck
from trafficflip.decision.model import ProbeResult, Status
from trafficflip.runtime.monitor import (
    HealthMonitor,
    ProbeJob,
    check_key,
    silence_grace,
    silence_limit,
)
from trafficflip.runtime.probe_scheduler import SchedulerStats
from trafficflip.runtime.probe_workers import FIRST_RESULT_GRACE, ProbeWorkers

UP, DOWN, UNKNOWN = Status.UP, Status.DOWN, Status.UNKNOWN
HEALTH = HealthConfig(interval=0.2, timeout=0.15, fall=2, rise=2)
# tests/service.py's Deployment: the interval and its default-derived timeout bound.
HEALTH_E2E = HealthConfig(interval=INTERVAL, timeout=0.15, fall=FALL, rise=2)
STARTED = r"probe_worker_started worker=(\d) pid=(\d+)"


@pytest.mark.parametrize(
    ("interval", "timeout", "limit"),
    [(1, 0.5, 3.0), (10, 2, 30.0), (0.2, 0.15, 1.35), (0.5, 0.4, 1.9)],
)
def test_the_silence_limit(interval: float, timeout: float, limit: float) -> None:
    health = HealthConfig(interval=interval, timeout=timeout, fall=2, rise=2)
    assert silence_limit(health) == pytest.approx(limit)


def feed(monitor: HealthMonitor, key: str, ok: bool, at: float, times: int = 2) -> None:
    for i in range(times):
        monitor.observe(key, ProbeResult(ok, "ok" if ok else "refused", 0.001, at + i))


def test_a_silent_up_check_goes_unknown_then_down_and_a_result_brings_it_back() -> None:
    monitor = HealthMonitor(config().services)
    key = next(iter(monitor.jobs))
    health = monitor.jobs[key].health
    limit, grace = silence_limit(health), silence_grace(health)
    feed(monitor, key, True, 1000.0)
    last = 1001.0
    timeline = [
        (last + limit, UP, []),
        (last + limit + 0.1, UNKNOWN, [key]),
        (last + limit + grace, UNKNOWN, []),
        (last + limit + grace + 0.1, DOWN, [key]),
        (last + limit + grace + 60, DOWN, []),
    ]
    for now, status, changed in timeline:
        assert monitor.expire(now) == changed, now
        assert monitor.checks[key].status is status, now
    assert "no probe result for" in monitor.checks[key].reason
    # Results again: back up through rise, as after any outage.
    feed(monitor, key, True, 2000.0, times=1)
    assert monitor.checks[key].status is DOWN
    feed(monitor, key, True, 2001.0, times=1)
    assert monitor.checks[key].status is UP


def test_a_down_check_stays_down_and_a_never_probed_one_is_left_alone() -> None:
    monitor = HealthMonitor(config().services)
    down, never = list(monitor.jobs)[:2]
    feed(monitor, down, False, 1000.0)
    reason = monitor.checks[down].reason
    assert monitor.expire(5000.0) == []
    assert monitor.checks[down].reason == reason and monitor.checks[never].status is UNKNOWN


async def test_a_silent_primary_is_held_while_unknown_then_failed_over() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}
    health = next(iter(rig.engine.jobs.values())).health
    limit, grace = silence_limit(health), silence_grace(health)
    start = rig.now
    # Only dr's results keep coming (the primary's worker hangs).
    while rig.now < start + limit + 0.5:
        rig.now += 0.5
        rig.probe("dr", True, times=1)
        rig.engine.expire_silent()
        await rig.tick()
    assert rig.engine.site_health("www")["primary"].status is UNKNOWN
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}  # unknown moves nothing
    while rig.now < start + limit + grace + 1.0:
        rig.now += 0.5
        rig.probe("dr", True, times=1)
        rig.engine.expire_silent()
        await rig.tick()
    assert rig.engine.site_health("www")["primary"].status is DOWN
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
    # A silent dr is never a reason to move traffic to it: it is not up.
    assert rig.engine.site_health("www")["dr"].status is UP


@pytest.fixture
async def pool() -> AsyncIterator[tuple[ProbeWorkers, Results, list[str]]]:
    sites = [HttpSite().start() for _ in range(2)]
    checks = [HttpCheck(type="http", url=site.url, body="ok") for site in sites]
    jobs = [ProbeJob(check_key(check, HEALTH), check, HEALTH) for check in checks]
    results = Results()
    expired: list[int] = []
    workers = ProbeWorkers(
        jobs, 2, results.observe, SchedulerStats(), expire=lambda: expired.append(1)
    )
    await workers.start()
    yield workers, results, [job.key for job in jobs]
    await workers.stop()
    assert expired  # the watch calls it every WATCH_EVERY
    for site in sites:
        site.stop()


async def test_a_stopped_worker_is_killed_restarted_and_named_meanwhile(
    pool: tuple[ProbeWorkers, Results, list[str]],
) -> None:
    workers, results, keys = pool
    await wait_for(lambda: results.count(keys[1]) >= 2, 15, "worker 1's first probes")
    victim = workers.pids[1]
    os.kill(victim, signal.SIGSTOP)
    await wait_for(lambda: 1 in workers.silent, silence_limit(HEALTH) + 5, "the silence seen")
    reasons = workers.not_ready_reasons()
    assert reasons and f"probe worker 1 (pid {victim}) silent for" in reasons[0], reasons
    await wait_for(lambda: workers.pids[1] != victim, 10, "a new worker 1")
    await wait_for(lambda: not alive(victim), 5, "the stopped worker gone")
    before = results.count(keys[1])
    await wait_for(lambda: results.count(keys[1]) >= before + 3, 15, "probes after the restart")
    assert workers.not_ready_reasons() == [] and workers.stats.worker_restarts == 1
    assert workers.pids[0] and results.count(keys[0]) > 0  # the other worker never stopped


def test_a_stopped_worker_does_not_freeze_failover_and_readyz_names_it(
    tmp_path: Path, moto_server: MotoServer, api_port: str
) -> None:
    deployment = Deployment(tmp_path, moto_server, env={"TRAFFICFLIP_PROBE_WORKERS": "2"})
    try:
        deployment.start()
        wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
        started = wait_until(
            lambda: dict(
                re.findall(r"probe_worker_started worker=(\d) pid=(\d+)", deployment.output())
            ),
            timeout=10,
            what="the workers' start lines",
        )
        # Worker 0 probes the first check in config order: the primary's.
        victim = int(started["0"])
        os.kill(victim, signal.SIGSTOP)
        stopped_at = deployment.primary.requests
        deployment.primary.status = 503  # the primary dies while nobody probes it
        seen: list[str] = []

        def named() -> bool:
            response = httpx.get(f"http://{api_port}/readyz", timeout=5)
            seen.append(response.text)
            return response.status_code == 503 and f"probe worker 0 (pid {victim})" in response.text

        wait_until(named, timeout=silence_limit(HEALTH_E2E) + 5, what="/readyz naming the worker")
        assert deployment.primary.requests <= stopped_at + 1  # it was the primary's prober
        wait_until(
            lambda: deployment.weights() == STANDBY,
            timeout=silence_limit(HEALTH_E2E) + 2 + FALL * INTERVAL + 5,
            what="failover to dr",
        )
        wait_until(lambda: not alive(victim), timeout=5, what="the stopped worker killed")
        wait_until(
            lambda: httpx.get(f"http://{api_port}/readyz", timeout=5).status_code == 200,
            timeout=10,
            what="ready again once the new worker reports",
        )
        assert "probe_worker_silent worker=0" in deployment.output()
    finally:
        deployment.close()


class FakeProc:
    """Stands in for a worker process in virtual time: a PID, alive until killed."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode, self.kills = pid, None, 0

    def kill(self) -> None:
        self.kills += 1


def test_each_silent_worker_is_killed_once_and_a_silent_successor_too() -> None:
    check = HttpCheck(type="http", url="http://127.0.0.1:9/")
    workers = ProbeWorkers(
        [ProbeJob(check_key(check, HEALTH), check, HEALTH)], 2, print, SchedulerStats()
    )
    limit = silence_limit(HEALTH)
    first = FakeProc(101)
    workers._procs[0], workers.heard[0] = first, 0.0  # type: ignore[assignment]
    workers._spoke.add(0)
    workers._kill_silent(limit)
    assert first.kills == 0 and workers.not_ready_reasons() == []
    for now in (limit + 0.1, limit + 1, limit + 2):
        workers._kill_silent(now)
    assert first.kills == 1 and "pid 101" in workers.not_ready_reasons()[0]
    # Its successor never writes a line: killed in turn, after the first-result grace.
    second = FakeProc(102)
    workers._procs[0], workers.heard[0] = second, 100.0  # type: ignore[assignment]
    workers._spoke.discard(0)
    workers._kill_silent(100.0 + limit + 1)
    assert second.kills == 0
    workers._kill_silent(100.0 + limit + FIRST_RESULT_GRACE + 0.1)
    assert second.kills == 1 and "pid 102" in workers.not_ready_reasons()[0]


async def test_a_worker_that_could_not_be_started_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = asyncio.create_subprocess_exec
    failures = iter([OSError(24, "Too many open files")])

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        # EMFILE once (cannot be made to happen here without starving the test runner).
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    site = HttpSite().start()
    check = HttpCheck(type="http", url=site.url)
    job = ProbeJob(check_key(check, HEALTH), check, HEALTH)
    results = Results()
    workers = ProbeWorkers([job], 2, results.observe, SchedulerStats())
    await workers.start()
    try:
        await wait_for(lambda: results.count(job.key) >= 2, 15, "probes after the failed start")
        assert workers.stats.worker_restarts == 1
    finally:
        await workers.stop()
        site.stop()
