"""The scheduler wiring: it triggers probes, ticks and reconciles; it decides nothing.

Probes, the 1 s engine tick and the reconcile run on a ``MonotonicScheduler`` (the event
loop's monotonic clock), so a wall-clock step neither stalls nor hurries a failover. One
APScheduler ``AsyncIOScheduler`` per process stays for jobs that belong to the wall clock
(cron-like jobs; none today). One scheduler per process: a scheduler per web worker would run
every job N times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import Protocol

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from trafficflip.runtime.engine import Engine
from trafficflip.runtime.monitor import ProbeJob
from trafficflip.runtime.probe_scheduler import LAG_SAMPLES, MonotonicScheduler, SchedulerStats
from trafficflip.runtime.probe_workers import ProbeWorkers
from trafficflip.runtime.probes import Prober

__all__ = ["LAG_SAMPLES", "TICK_INTERVAL", "Component", "Runner", "SchedulerStats"]

log = logging.getLogger("trafficflip.runtime.scheduler")
TICK_INTERVAL = 1.0


class Component(Protocol):
    """Something that runs beside the scheduler in the same event loop (the API server,
    the notifier). ``start`` returns once it runs; ``stop`` once it has finished."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Runner:
    """Runs the engine under one scheduler, with its components, until ``stop()``.

    ``alive_at`` is the monotonic time (``time.monotonic()``) of the last engine tick;
    ``/healthz`` compares it with ``time.monotonic()``.
    """

    def __init__(
        self,
        engine: Engine,
        prober: Prober,
        *,
        reconcile_interval: float,
        components: Sequence[Component] = (),
        probe_workers: int = 1,
        log_level: str = "INFO",
        log_format: str = "text",
    ) -> None:
        """``probe_workers`` 1 probes in this process; N > 1 runs N probe processes (they log
        with ``log_level`` and ``log_format``)."""
        self.engine = engine
        self.prober = prober
        self.reconcile_interval = reconcile_interval
        self.components = list(components)
        self.stats = SchedulerStats()
        self.timers = MonotonicScheduler(self.stats)
        # For wall-clock jobs only; probes, ticks and reconciles are on ``timers``.
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._stopped = asyncio.Event()
        self.alive_at = time.monotonic()
        self._probing: set[str] = set()
        self.workers = (
            ProbeWorkers(
                list(engine.jobs.values()),
                probe_workers,
                engine.observe,
                self.stats,
                log_level=log_level,
                log_format=log_format,
                expire=engine.expire_silent,
            )
            if probe_workers > 1
            else None
        )

    def schedule(self) -> None:
        """Add the probe (unless workers run them), tick and reconcile jobs; probes are
        spread over their interval."""
        if self.workers is None:
            self._probing = set(self.engine.jobs)
            self.timers.add_spread(
                [
                    (key, job.health.interval, self._prober_of(job))
                    for key, job in self.engine.jobs.items()
                ]
            )
        self.timers.add("tick", TICK_INTERVAL, self._tick)
        self.timers.add("reconcile", self.reconcile_interval, self._reconcile)
        self.scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)

    async def sync_probes(self) -> None:
        """Follow ``engine.jobs`` after a reload: probe new checks, stop removed ones.
        Workers are restarted with new shards when the set of checks changed."""
        if self.workers is not None:
            await self.workers.reshard(list(self.engine.jobs.values()))
            return
        current = set(self.engine.jobs)
        for key in self._probing - current:
            self.timers.remove(key)
        added = [self.engine.jobs[key] for key in current - self._probing]
        self.timers.add_spread(
            [(job.key, job.health.interval, self._prober_of(job)) for job in added]
        )
        self._probing = current

    def _prober_of(self, job: ProbeJob) -> Callable[[], Awaitable[None]]:
        key, check, timeout = job.key, job.check, job.health.timeout
        probe, observe = self.prober.probe, self.engine.observe

        async def run() -> None:
            observe(key, await probe(check, timeout))

        return run

    async def _tick(self) -> None:
        self.alive_at = time.monotonic()
        await self.engine.tick()

    async def _reconcile(self) -> None:
        await self.engine.reconcile()

    def _on_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            self.stats.missed += 1
            log.warning("job_missed job=%s", event.job_id)
        else:
            self.stats.errors += 1
            log.error("job_error job=%s", event.job_id)

    async def run(self) -> None:
        """Start the scheduler and the components, wait until ``stop()``, shut all down.

        Components stop after the scheduler and in reverse order, so the last events of a
        stopping service still reach a notifier listed before the API server.
        """
        self.schedule()
        self.timers.start()
        self.scheduler.start()
        started: list[Component] = []
        try:
            if self.workers is not None:
                await self.workers.start()
                started.append(self.workers)
            for component in self.components:
                await component.start()
                started.append(component)
            log.info(
                "started services=%d checks=%d", len(self.engine.services), len(self.engine.jobs)
            )
            await self._stopped.wait()
        finally:
            self.timers.stop()
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
