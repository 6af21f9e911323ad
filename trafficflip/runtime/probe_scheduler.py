"""Periodic jobs on the event loop's monotonic clock: probes, the engine tick, the reconcile.

APScheduler 3's ``IntervalTrigger`` computes due times on the wall clock: when NTP steps it
back 120 s, no probe runs until the wall clock catches up, and a dead primary keeps its
traffic. Here every due time is ``loop.time()`` (``time.monotonic`` on asyncio and uvloop),
which no clock step moves. Each job keeps a fixed phase (``due += interval``), so the gap
between two runs of one job stays the interval however long a run takes.

Rules, as the APScheduler jobs had them: never two runs of one job at once (a run due while
the previous one is still going is skipped and counted as an overrun); a loop late by whole
intervals runs the job once, and counts the skipped runs as missed when it was late by more
than ``MISSED_GRACE`` (or the interval); first runs are spread over
one interval so a thousand checks do not fire together. The scheduler only triggers.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("trafficflip.runtime.scheduler")
# Lag samples kept for status, metrics and benchmarks.
LAG_SAMPLES = 10000
LABEL_MAX = 32
MISSED_GRACE = 1.0
# Overrun and missed-run warnings: one line per kind this often, with the count.
WARN_EVERY = 10.0


class SchedulerStats:
    """Scheduling lag (actual start minus due time) and missed or overrunning runs."""

    def __init__(self) -> None:
        self.lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.missed = 0
        self.overrun = 0
        self.errors = 0
        self.runs = 0
        # Probe worker processes that died and were started again (probe_workers > 1).
        self.worker_restarts = 0


def job_label(name: str) -> str:
    """A short, stable name for logs: a probe job's name is its check key, which holds the
    check's headers (possibly a secret) and is too long for a log line."""
    if len(name) <= LABEL_MAX:
        return name
    return f"probe:{zlib.crc32(name.encode()):08x}"


@dataclass
class _Job:
    name: str
    interval: float
    run: Callable[[], Awaitable[None]]
    due: float = 0.0
    running: bool = False
    handle: asyncio.TimerHandle | None = None


class MonotonicScheduler:
    """Runs coroutine functions every ``interval`` seconds of ``loop.time()``."""

    def __init__(self, stats: SchedulerStats | None = None) -> None:
        self.stats = stats or SchedulerStats()
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def add(
        self, name: str, interval: float, run: Callable[[], Awaitable[None]], *, delay: float = 0
    ) -> None:
        """Run ``run()`` first after ``delay`` seconds, then every ``interval`` seconds.
        Jobs added before ``start`` begin when it is called."""
        job = _Job(name, interval, run)
        self._jobs[name] = job
        if self._loop is not None:
            self._arm(job, self._loop.time() + delay)
        else:
            job.due = delay  # relative until start

    def add_spread(self, jobs: list[tuple[str, float, Callable[[], Awaitable[None]]]]) -> None:
        """Add ``(name, interval, run)`` jobs with first runs evenly spread over each one's
        interval, so their probes reach the loop (and the sites) at an even rate."""
        for index, (name, interval, run) in enumerate(jobs):
            self.add(name, interval, run, delay=interval * index / max(len(jobs), 1))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        for job in self._jobs.values():
            self._arm(job, now + job.due)

    def stop(self) -> None:
        """Cancel every timer and running job."""
        for job in self._jobs.values():
            if job.handle is not None:
                job.handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._loop = None

    def remove(self, name: str) -> None:
        """Stop scheduling ``name``; a run in progress finishes."""
        job = self._jobs.pop(name, None)
        if job is not None and job.handle is not None:
            job.handle.cancel()

    def names(self) -> list[str]:
        return list(self._jobs)

    def interval(self, name: str) -> float:
        return self._jobs[name].interval

    def _warn(self, kind: str, job: _Job, now: float, why: str, count: int = 1) -> None:
        """Log ``kind`` at most once per ``WARN_EVERY`` with the count since the last line:
        an overloaded prober must not spend its time writing one line per late probe."""
        self._unlogged[kind] = self._unlogged.get(kind, 0) + count
        if now - self._logged_at.get(kind, -WARN_EVERY) < WARN_EVERY:
            return
        runs, self._unlogged[kind], self._logged_at[kind] = self._unlogged[kind], 0, now
        log.warning("%s runs=%d job=%s: %s", kind, runs, job_label(job.name), why)

    def _arm(self, job: _Job, due: float) -> None:
        assert self._loop is not None
        job.due = due
        job.handle = self._loop.call_at(due, self._fire, job)

    def _fire(self, job: _Job) -> None:
        assert self._loop is not None
        now = self._loop.time()
        stats = self.stats
        stats.runs += 1
        stats.lags.append(now - job.due)
        if job.running:
            stats.overrun += 1
            self._warn("job_overrun", job, now, "previous runs still going")
        else:
            job.running = True
            task = self._loop.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        due = job.due + job.interval
        if due <= now:
            # Late by whole intervals (a stalled loop): run once now, count the rest as missed.
            skipped = int((now - due) // job.interval) + 1
            due += skipped * job.interval
            if now - job.due > max(MISSED_GRACE, job.interval):
                # Counted past a grace, as APScheduler's misfire grace did: a start-up import
                # that holds the loop for 300 ms is not worth an alert at interval 0.2 s.
                stats.missed += skipped
                self._warn("job_missed", job, now, "the loop was late", skipped)
        self._arm(job, due)

    async def _run(self, job: _Job) -> None:
        try:
            await job.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure must not stop its next runs
            self.stats.errors += 1
            log.error("job_error job=%s error=%r", job_label(job.name), exc)
        finally:
            job.running = False
