"""The scheduler only triggers: one job per distinct check, a tick and a reconcile."""

from __future__ import annotations

from apscheduler.triggers.interval import IntervalTrigger

from tests.test_engine import config
from trafficflip.backend.testing import MemoryProvider
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import TICK_INTERVAL, Runner
from trafficflip.runtime.state import SqliteStateStore


async def test_jobs_are_bounded_coalesced_and_have_a_misfire_grace() -> None:
    # 20 services share the same two checks: two probe jobs, not forty.
    engine = Engine(
        config(services=20).services, SqliteStateStore(":memory:"), {"mem": MemoryProvider()}
    )
    prober = Prober()
    runner = Runner(engine, prober, reconcile_interval=30)
    runner.schedule()
    jobs = {job.id: job for job in runner.scheduler.get_jobs()}
    probes = [job for name, job in jobs.items() if name.startswith("probe:")]
    assert len(probes) == 2 and {"tick", "reconcile"} <= set(jobs)
    for job in jobs.values():
        assert job.max_instances == 1 and job.coalesce is True
        assert job.misfire_grace_time is not None and job.misfire_grace_time >= 1
        assert isinstance(job.trigger, IntervalTrigger)
    for job in probes:
        assert job.trigger.interval.total_seconds() == 1.0  # the services' health.interval
        assert job.trigger.jitter is not None and 0 < job.trigger.jitter <= 0.5
    assert jobs["tick"].trigger.interval.total_seconds() == TICK_INTERVAL
    assert jobs["reconcile"].trigger.interval.total_seconds() == 30
    await prober.close()
