"""Probe worker processes against real loopback sites: results stream back to ``observe``, a
killed worker is restarted and counted, and stopping leaves no worker behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, Deployment
from tests.support import HttpSite, MotoServer, wait_until
from trafficflip.config.loader import load_config
from trafficflip.config.schema import HealthConfig, HttpCheck
from trafficflip.decision.model import ProbeResult
from trafficflip.errors import ConfigError
from trafficflip.runtime.monitor import ProbeJob, check_key
from trafficflip.runtime.probe_scheduler import SchedulerStats
from trafficflip.runtime.probe_workers import ProbeWorkers

HEALTH = HealthConfig(interval=0.2, timeout=0.15, fall=2, rise=2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


async def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def sites() -> Iterator[list[HttpSite]]:
    started = [HttpSite().start() for _ in range(3)]
    yield started
    for site in started:
        site.stop()


class Results:
    def __init__(self) -> None:
        self.by_key: dict[str, list[ProbeResult]] = defaultdict(list)

    def observe(self, key: str, result: ProbeResult) -> None:
        self.by_key[key].append(result)

    def count(self, key: str) -> int:
        return len(self.by_key[key])


@pytest.fixture
async def pool(sites: list[HttpSite]) -> AsyncIterator[tuple[ProbeWorkers, Results, list[str]]]:
    closed = HttpSite()  # nothing listens on its port
    checks = [HttpCheck(type="http", url=site.url, body="ok") for site in [*sites, closed]]
    jobs = [ProbeJob(check_key(check, HEALTH), check, HEALTH) for check in checks]
    results = Results()
    workers = ProbeWorkers(jobs, 2, results.observe, SchedulerStats())
    await workers.start()
    yield workers, results, [job.key for job in jobs]
    await workers.stop()


async def test_each_worker_probes_its_shard_and_streams_results(
    pool: tuple[ProbeWorkers, Results, list[str]],
) -> None:
    workers, results, keys = pool
    assert workers.shard(0) == [0, 2] and workers.shard(1) == [1, 3]
    await wait_for(lambda: all(results.count(k) >= 3 for k in keys), 15, "three probes each")
    assert len(set(workers.pids.values())) == 2
    for key in keys[:3]:
        assert all(r.ok and r.reason == "ok" for r in results.by_key[key])
    assert {r.reason for r in results.by_key[keys[3]]} == {"connect refused"}
    # ``at`` is the worker's time.monotonic(): the same clock as ours.
    latest = max(r.at for r in results.by_key[keys[0]])
    assert 0 <= time.monotonic() - latest < 2
    # One check's probes keep their interval (fixed phase in the worker); the median, as a
    # loaded machine delays single probes.
    stamps = [r.at for r in results.by_key[keys[0]]]
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    assert 0.15 < gaps[len(gaps) // 2] < 0.25, gaps


async def test_a_killed_worker_is_restarted_and_counted(
    pool: tuple[ProbeWorkers, Results, list[str]],
) -> None:
    workers, results, keys = pool
    await wait_for(lambda: results.count(keys[1]) >= 1, 15, "a first probe by worker 1")
    victim = workers.pids[1]
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: workers.stats.worker_restarts == 1, 10, "the restart to be counted")
    await wait_for(lambda: workers.pids[1] != victim, 10, "a new worker 1")
    before = results.count(keys[1])
    await wait_for(lambda: results.count(keys[1]) >= before + 3, 15, "probes after the restart")
    assert workers.stats.worker_restarts == 1


async def test_stopping_leaves_no_worker_behind(sites: list[HttpSite]) -> None:
    check = HttpCheck(type="http", url=sites[0].url)
    jobs = [ProbeJob(check_key(check, HEALTH), check, HEALTH)]
    results = Results()
    workers = ProbeWorkers(jobs, 2, results.observe, SchedulerStats())
    await workers.start()
    await wait_for(lambda: results.count(jobs[0].key) >= 1 and len(workers.pids) == 2, 15, "up")
    pids = list(workers.pids.values())
    await workers.stop()
    assert not any(alive(pid) for pid in pids)
    assert workers.stats.worker_restarts == 0  # a stop is not a death


async def test_a_shard_of_thousands_of_checks_reaches_its_worker(site: HttpSite) -> None:
    # Thousands of checks make a shard line of megabytes (a reader's default limit is 64 KiB).
    slow = HealthConfig(interval=30, timeout=1, fall=2, rise=2)
    checks = [
        HttpCheck(type="http", url=f"{site.url}?n={i}", headers={"X-Pad": "x" * 200})
        for i in range(4000)
    ]
    jobs = [ProbeJob(check_key(check, slow), check, slow) for check in checks]
    results = Results()
    workers = ProbeWorkers(jobs, 2, results.observe, SchedulerStats())
    await workers.start()
    try:
        # First runs are spread over 30 s: the first few of each shard arrive at once.
        await wait_for(
            lambda: results.count(jobs[0].key) and results.count(jobs[1].key), 15, "both shards"
        )
    finally:
        await workers.stop()
    assert workers.stats.worker_restarts == 0


@pytest.mark.parametrize("value", [0, -1, 65, "two"])
def test_probe_workers_is_validated(value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(data={"probe_workers": value, "providers": {}, "services": []})
    assert "probe_workers" in str(raised.value)


def test_a_service_with_probe_workers_fails_over_and_survives_a_worker_death(
    tmp_path: Path, moto_server: MotoServer, api_port: str
) -> None:
    deployment = Deployment(tmp_path, moto_server, env={"TRAFFICFLIP_PROBE_WORKERS": "2"})
    try:
        deployment.start()
        wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
        started = wait_until(
            lambda: re.findall(r"probe_worker_started worker=(\d) pid=(\d+)", deployment.output()),
            timeout=10,
            what="the workers' start lines",
        )
        assert {worker for worker, _ in started} == {"0", "1"}
        for _, pid in started:
            os.kill(int(pid), signal.SIGKILL)
        wait_until(
            lambda: deployment.output().count("probe_worker_died") == 2, timeout=10, what="deaths"
        )
        wait_until(
            lambda: deployment.output().count("probe_worker_started") >= 4,
            timeout=10,
            what="restarts",
        )
        probes = deployment.primary.requests
        wait_until(lambda: deployment.primary.requests > probes + 2, timeout=5, what="probing")
        metrics = httpx.get(f"http://{api_port}/metrics", timeout=10).text
        assert "trafficflip_probe_worker_restarts_total 2.0" in metrics
        deployment.primary.stop()
        wait_until(
            lambda: deployment.weights() == STANDBY,
            timeout=FALL * INTERVAL + 2.0,
            what="failover to dr",
        )
        assert deployment.process is not None
        assert deployment.process.stop() == 0
        pids = re.findall(r"probe_worker_started worker=\d pid=(\d+)", deployment.output())
        assert not any(alive(int(pid)) for pid in pids)
    finally:
        deployment.close()
