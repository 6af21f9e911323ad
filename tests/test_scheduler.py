"""The scheduler only triggers: one job per distinct check, a tick and a reconcile, all on the
loop's monotonic clock, with the APScheduler-era rules (no overlap, late runs counted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.test_engine import config
from trafficflip.backend.testing import MemoryProvider
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.probe_scheduler import MonotonicScheduler
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import TICK_INTERVAL, Runner
from trafficflip.runtime.state import SqliteStateStore


async def test_one_job_per_distinct_check_plus_tick_and_reconcile() -> None:
    # 20 services share the same two checks: two probe jobs, not forty.
    engine = Engine(
        config(services=20).services, SqliteStateStore(":memory:"), {"mem": MemoryProvider()}
    )
    prober = Prober()
    runner = Runner(engine, prober, reconcile_interval=30)
    runner.schedule()
    names = runner.timers.names()
    probes = [name for name in names if name in engine.jobs]  # probe jobs by check key
    assert len(probes) == 2 and {"tick", "reconcile"} <= set(names)
    assert all(runner.timers.interval(name) == 1.0 for name in probes)  # health.interval
    assert runner.timers.interval("tick") == TICK_INTERVAL
    assert runner.timers.interval("reconcile") == 30
    assert runner.scheduler.get_jobs() == []  # APScheduler keeps wall-clock jobs only
    await prober.close()


async def test_runs_keep_a_fixed_phase_on_the_monotonic_clock() -> None:
    scheduler = MonotonicScheduler()
    starts: list[float] = []

    async def job() -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(0.03)  # a run's own duration does not push the next one

    scheduler.add("job", 0.1, job)
    scheduler.start()
    await asyncio.sleep(0.55)
    scheduler.stop()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(starts) >= 5 and all(0.07 < gap < 0.13 for gap in gaps), gaps
    assert abs((starts[-1] - starts[0]) - 0.1 * (len(starts) - 1)) < 0.03
    assert scheduler.stats.runs == len(starts) and scheduler.stats.overrun == 0


async def test_a_run_still_going_is_not_overlapped_but_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = MonotonicScheduler()
    running, most = 0, 0

    async def slow() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.25)
        running -= 1

    scheduler.add("slow", 0.1, slow)
    scheduler.start()
    await asyncio.sleep(0.45)
    scheduler.stop()
    assert most == 1 and scheduler.stats.overrun >= 2
    # One warning per WARN_EVERY, not one per late run: logging must not feed an overload.
    lines = [r.getMessage() for r in caplog.records if "job_overrun" in r.getMessage()]
    assert lines == ["job_overrun runs=1 job=slow: previous runs still going"]


async def test_a_stalled_loop_runs_the_job_once_and_counts_the_missed_runs() -> None:
    scheduler = MonotonicScheduler()
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1

    scheduler.add("job", 0.05, job)
    scheduler.start()
    await asyncio.sleep(0.01)
    time.sleep(1.2)  # the loop is blocked for 24 intervals, past the missed-run grace
    await asyncio.sleep(0.02)
    scheduler.stop()
    # One run on time before the stall, one catching up after it: not six.
    assert runs == 2 and scheduler.stats.missed >= 20
    assert max(scheduler.stats.lags) >= 1.0


async def test_a_failing_job_is_counted_and_keeps_running() -> None:
    scheduler = MonotonicScheduler()
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler.add("broken", 0.05, broken)
    scheduler.start()
    await asyncio.sleep(0.22)
    scheduler.stop()
    assert calls >= 3 and scheduler.stats.errors == calls


async def test_first_runs_are_spread_over_the_interval() -> None:
    scheduler = MonotonicScheduler()
    starts: dict[str, float] = {}

    def recorder(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            starts.setdefault(name, time.monotonic())

        return run

    scheduler.add_spread([(f"p{i}", 0.4, recorder(f"p{i}")) for i in range(4)])
    began = time.monotonic()
    scheduler.start()
    await asyncio.sleep(0.35)
    scheduler.stop()
    offsets = sorted(at - began for at in starts.values())
    assert len(offsets) == 4
    assert all(abs(o - 0.1 * i) < 0.04 for i, o in enumerate(offsets)), offsets
