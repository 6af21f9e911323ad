"""The scheduler wiring: APScheduler 3.x triggers probes, ticks and reconciles; it decides nothing.

One ``AsyncIOScheduler`` per process (a scheduler per web worker would run every job N times).
Every job has ``max_instances=1``, ``coalesce=True`` and an explicit misfire grace: a late run
is still run once rather than silently skipped by APScheduler's 1 s default.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from trafficflip.runtime.engine import Engine
from trafficflip.runtime.monitor import ProbeJob
from trafficflip.runtime.probes import Prober

log = logging.getLogger("trafficflip.runtime.scheduler")
TICK_INTERVAL = 1.0
# Lag samples kept for status and benchmarks.
LAG_SAMPLES = 10000


class SchedulerStats:
    """Scheduling lag (actual start minus due time) and missed or overrunning jobs."""

    def __init__(self) -> None:
        self.lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.missed = 0
        self.overrun = 0
        self.errors = 0
        self.runs = 0


class Component(Protocol):
    """Something that runs beside the scheduler in the same event loop (the API server,
    the notifier). ``start`` returns once it runs; ``stop`` once it has finished."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Runner:
    """Runs the engine under one scheduler, with its components, until ``stop()``."""

    def __init__(
        self,
        engine: Engine,
        prober: Prober,
        *,
        reconcile_interval: float,
        components: Sequence[Component] = (),
    ) -> None:
        self.engine = engine
        self.prober = prober
        self.reconcile_interval = reconcile_interval
        self.components = list(components)
        self.stats = SchedulerStats()
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._stopped = asyncio.Event()
        self.alive_at = time.time()

    def schedule(self) -> None:
        now = datetime.now(UTC)
        for job in self.engine.jobs.values():
            self._add_probe(job, now)
        self.scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=TICK_INTERVAL),
            id="tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=30,
            next_run_time=now,
        )
        self.scheduler.add_job(
            self._reconcile,
            IntervalTrigger(seconds=self.reconcile_interval),
            id="reconcile",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(self.reconcile_interval) + 1,
            next_run_time=now,
        )
        self.scheduler.add_listener(
            self._on_event,
            EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_SUBMITTED | EVENT_JOB_ERROR,
        )

    def refresh_probes(self) -> None:
        """After a reload: probe jobs for new checks start, those for removed checks stop."""
        now = datetime.now(UTC)
        scheduled = {job.id for job in self.scheduler.get_jobs()}
        wanted = {f"probe:{hash(key)}": job for key, job in self.engine.jobs.items()}
        for job_id in scheduled:
            if job_id.startswith("probe:") and job_id not in wanted:
                self.scheduler.remove_job(job_id)
        for job_id, job in wanted.items():
            if job_id not in scheduled:
                self._add_probe(job, now)

    def _add_probe(self, job: ProbeJob, now: datetime) -> None:
        interval = job.health.interval
        # Spread first runs over one interval so a thousand checks do not fire together.
        first = now + timedelta(seconds=random.uniform(0, interval))
        self.scheduler.add_job(
            self._probe,
            IntervalTrigger(seconds=interval, jitter=min(0.05 * interval, 0.5)),
            args=[job.key],
            id=f"probe:{hash(job.key)}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
            next_run_time=first,
        )

    async def _probe(self, key: str) -> None:
        job = self.engine.jobs.get(key)
        if job is None:
            return  # removed by a reload
        result = await self.prober.probe(job.check, job.health.timeout)
        self.engine.observe(key, result)

    async def _tick(self) -> None:
        self.alive_at = time.time()
        await self.engine.tick()

    async def _reconcile(self) -> None:
        await self.engine.reconcile()

    def _on_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_SUBMITTED and isinstance(event, JobSubmissionEvent):
            self.stats.runs += 1
            due = event.scheduled_run_times[-1]
            self.stats.lags.append((datetime.now(UTC) - due).total_seconds())
        elif event.code == EVENT_JOB_MISSED:
            self.stats.missed += 1
            log.warning("job_missed job=%s", event.job_id)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.stats.overrun += 1
            log.warning("job_overrun job=%s: previous run still going", event.job_id)
        elif event.code == EVENT_JOB_ERROR and isinstance(event, JobExecutionEvent):
            self.stats.errors += 1
            log.error("job_error job=%s error=%r", event.job_id, event.exception)

    async def run(self) -> None:
        """Start the scheduler and the components, wait until ``stop()``, shut all down.

        Components stop after the scheduler and in reverse order, so the last events of a
        stopping service still reach a notifier listed before the API server.
        """
        self.schedule()
        self.scheduler.start()
        started: list[Component] = []
        try:
            for component in self.components:
                await component.start()
                started.append(component)
            log.info(
                "started services=%d checks=%d", len(self.engine.services), len(self.engine.jobs)
            )
            await self._stopped.wait()
        finally:
            self.scheduler.shutdown(wait=False)
            for component in reversed(started):
                await component.stop()
            await self._close()

    async def _close(self) -> None:
        await self.engine.close()
        await self.prober.close()
        for provider in self.engine.providers.values():
            await provider.close()
        log.info("stopped")

    def stop(self) -> None:
        self._stopped.set()
