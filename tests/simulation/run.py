"""One seeded run of the fault simulation, and its promises checked at every step.

Replay a seed: ``.venv/bin/python -m tests.simulation.run --seed N [--verbose]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.simulation.vloop import VirtualTimeLoop
from tests.simulation.world import (
    FAULTS,
    Burst,
    PumpedWriter,
    SimProvider,
    SiteTruth,
    build_config,
    engine_on,
    probe_result,
    random_services,
)
from trafficflip.decision.decide import decide
from trafficflip.decision.model import EventKind, JournalEntry, ServiceState
from trafficflip.runtime.engine import Engine, startup_time
from trafficflip.runtime.listeners import EngineListener
from trafficflip.runtime.state import SqliteStateStore

STEP = 0.25  # seconds between two checks of the promises
RECONCILE = 10.0  # the simulated service's reconcile_interval
CHAOS = 240.0  # seconds of faults, flaps, crashes, reloads and commands
CALM = 150.0  # then everything healthy and no fault: the provider must converge
# Once a site is seen down, the write that moves traffic off it lands within this, counted
# from when the provider answers again (the engine's promise for urgent writes).
URGENT_WRITE_DEADLINE = 3.0
# A crashed instance is down this long before it starts again.
DOWNTIME = (1.0, 8.0)


@dataclass
class Scheduled:
    at: float
    what: str
    args: dict[str, Any] = field(default_factory=dict)


class Violation(AssertionError):
    pass


class Simulation:
    """The world, the engine on it, and the schedule; ``run`` returns the violations."""

    def __init__(self, seed: int, *, chaos: float = CHAOS, calm: float = CALM) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.chaos, self.calm = chaos, calm
        self.loop = VirtualTimeLoop(start=0.0)
        self.services_data = random_services(self.rng)
        self.config = build_config(self.services_data)
        self.provider = SimProvider(
            self.loop.time,
            from_known=self.rng.random() < 0.5,
            spacing=self.rng.choice([0.0, 1.0]),
        )
        self.provider.latency = self.rng.choice([0.01, 0.05, 0.3])
        self.store = SqliteStateStore(":memory:")
        self.truth: dict[tuple[str, str], SiteTruth] = {}
        self.restarted_at: list[tuple[float, float]] = []  # (down from, up again)
        self.schedule: list[Scheduled] = []
        self.journal: list[JournalEntry] = []
        self.engine: Engine
        self.writer: PumpedWriter
        self._tasks: list[asyncio.Task[None]] = []
        self._previous: dict[str, ServiceState] = {}
        self._last_step_at: dict[str, float] = {}
        self._journaled_writes: dict[str, int] = {}
        # Since when each service is not held (a hold freezes automatic changes).
        self._automatic_since: dict[str, float] = {}
        # When someone edited a service's records by hand (found by the next reconcile).
        self._drifted: dict[str, list[float]] = {}
        self._plan_schedule()

    # -- the schedule ---------------------------------------------------------------------

    def _plan_schedule(self) -> None:
        rng, chaos = self.rng, self.chaos
        for service in self.config.services:
            sites = service.site_names
            for site in sites:
                self.truth[(service.name, site)] = SiteTruth()
                for _ in range(rng.randint(0, 4)):
                    start = rng.uniform(5, chaos)
                    length = rng.choice([rng.uniform(0.5, 4), rng.uniform(5, 60)])
                    self._at(start, "site", service=service.name, site=site, up=False)
                    self._at(start + length, "site", service=service.name, site=site, up=True)
            if rng.random() < 0.4:  # every site down at once for a while
                start, length = rng.uniform(10, chaos), rng.uniform(5, 40)
                for site in sites:
                    self._at(start, "site", service=service.name, site=site, up=False)
                    self._at(start + length, "site", service=service.name, site=site, up=True)
            for _ in range(rng.randint(0, 4)):
                self._at(rng.uniform(5, chaos), "command", service=service.name)
            if rng.random() < 0.3:  # someone edits the records by hand: the reconcile undoes it
                self._at(rng.uniform(5, chaos), "drift", service=service.name)
        for _ in range(rng.randint(0, 4)):
            start = rng.uniform(0, chaos)
            length = rng.choice([rng.uniform(0.5, 5), rng.uniform(5, 30)])
            self.provider.bursts.append(Burst(start, start + length, rng.choice(FAULTS)))
        for _ in range(rng.randint(0, 2)):
            start = rng.uniform(0, chaos)
            self._at(start, "store", failing=True)
            self._at(start + rng.uniform(1, 30), "store", failing=False)
        for _ in range(rng.randint(0, 2)):
            self._at(rng.uniform(10, chaos), "crash")
        if rng.random() < 0.4:
            self._at(rng.uniform(10, chaos), "reload")
        self.schedule.sort(key=lambda s: s.at)

    def _at(self, at: float, what: str, **args: Any) -> None:
        self.schedule.append(Scheduled(at, what, args))

    # -- running --------------------------------------------------------------------------

    def run(self) -> list[str]:
        """The broken promise that ended the run, if any (at most one: the first)."""
        try:
            broken = self.loop.run_to_the_end(self._main())
        finally:
            self.store.close()
        return [broken] if broken else []

    async def _main(self) -> None:
        self._start_engine()
        end = self.chaos + self.calm
        calm = False
        while self.loop.time() < end:
            await asyncio.sleep(STEP)
            now = self.loop.time()
            if not calm and now >= self.chaos:
                calm = True  # the incident is over: the operator lets go of every hold
                for service in self.config.services:
                    if self.engine.states[service.name].held:
                        self.engine.execute(service.name, "release", {}, "simulation")
            # What happened since the last step is judged by the config it happened under;
            # then the schedule's events of this moment.
            self._check_step(now)
            while self.schedule and self.schedule[0].at <= now:
                await self._happen(self.schedule.pop(0))
            self.writer.pump()
        self._check_converged()

    def _start_engine(self) -> None:
        self.engine, self.writer = engine_on(
            self.config, self.store, self.provider, self.loop, self.rng
        )
        self.engine.listeners.append(_JournalTap(self))
        self._previous = dict(self.engine.states)
        self._tasks = [
            self.loop.create_task(self._every(1.0, self._tick)),
            self.loop.create_task(self._every(RECONCILE, self._reconcile)),
        ]
        for key, job in self.engine.jobs.items():
            service, site = self._owner(key)
            offset = self.rng.uniform(0, job.health.interval)
            self._tasks.append(
                self.loop.create_task(
                    self._probing(key, service, site, job.health.interval, offset)
                )
            )

    def _owner(self, key: str) -> tuple[str, str]:
        for name, runtime in self.engine.services.items():
            for site, keys in runtime.site_checks.items():
                if key in keys:
                    return name, site
        raise KeyError(key)

    async def _every(self, interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            await job()

    async def _tick(self) -> None:
        await self.engine.tick()

    async def _reconcile(self) -> None:
        self.loop.create_task(self.engine.reconcile())

    async def _probing(
        self, key: str, service: str, site: str, interval: float, offset: float
    ) -> None:
        await asyncio.sleep(offset)
        while True:
            now = self.loop.time()
            self.engine.observe(key, probe_result(self.truth[(service, site)].up(now), now))
            await asyncio.sleep(interval)

    async def _happen(self, event: Scheduled) -> None:
        now, args = self.loop.time(), event.args
        if event.what == "site":
            self.truth[(args["service"], args["site"])].set(now, args["up"])
        elif event.what == "store":
            self.writer.failing = args["failing"]
        elif event.what == "crash":
            await self._crash(now)
        elif event.what == "reload":
            self._reload()
        elif event.what == "command":
            self._command(args["service"])
        elif event.what == "drift":
            self.provider.edit_by_hand(args["service"], self.rng)
            self._drifted.setdefault(args["service"], []).append(now)

    async def _crash(self, now: float) -> None:
        for task in self._tasks:
            task.cancel()
        self.engine.halt()
        self.writer.lose()
        down = self.rng.uniform(*DOWNTIME)
        await asyncio.sleep(down)
        self.restarted_at.append((now, self.loop.time()))
        self._start_engine()

    def _reload(self) -> None:
        data = [dict(s) for s in self.services_data]
        for service in data:
            failback = dict(service["failback"])
            failback["step_duration"] = self.rng.choice([1, 3, 8])
            failback["stabilize"] = self.rng.choice([0, 3, 10])
            service["failback"] = failback
        self.services_data = data
        self.config = build_config(data)
        self.engine.reload(self.config.services, {"mem": self.provider})

    def _command(self, name: str) -> None:
        data = next(d for d in self.services_data if d["name"] == name)
        sites = [site["name"] for site in data["sites"]]
        choice = self.rng.choice(["failover", "drain", "hold", "release", "failback", "promote"])
        args: dict[str, Any] = {}
        if choice == "failover":
            args["to"] = self.rng.choice(sites)
        elif choice in ("drain", "promote"):
            args["site"] = self.rng.choice(sites)
        if choice in ("failover", "drain", "hold") and self.rng.random() < 0.7:
            args["for"] = f"{self.rng.randint(5, 60)}s"
        self.engine.execute(name, choice, args, "simulation")

    # -- the promises ---------------------------------------------------------------------

    def fail(self, message: str) -> None:
        raise Violation(f"seed {self.seed} t={self.loop.time():.2f}: {message}")

    def _check_step(self, now: float) -> None:
        if self.provider.violations:
            self.fail(self.provider.violations[0])
        for service in self.config.services:
            name = service.name
            held = self.provider.site_weights(name)
            if held and not any(w > 0 for w in held.values()):
                self.fail(f"{name}: the provider holds an empty answer {held}")
            self._check_failover_deadline(service, held, now)
            self._check_all_down(service, held, now)
            self._check_ramp(service, now)
        self._check_journal_matches_provider()

    def _check_failover_deadline(self, service: Any, held: dict[str, int], now: float) -> None:
        """No weight stays on a site down longer than it takes to see it (fall probes and
        the probe's spread) plus the urgent-write deadline, while another site is up;
        time the provider failed, or the instance was down or starting, is added."""
        state = self.engine.states.get(service.name)
        if state is None or state.held:
            self._automatic_since.pop(service.name, None)
            return
        automatic_since = self._automatic_since.setdefault(service.name, now)
        if not held:
            return
        health = service.health
        for site, weight in held.items():
            truth = self.truth[(service.name, site)]
            if weight == 0 or truth.up(now):
                continue
            down_since = truth.steady_since(now)
            seen_by = down_since + (health.fall + 1) * health.interval
            others = [
                s for s in service.site_names if s != site and self.truth[(service.name, s)].up(now)
            ]
            ups = [self.truth[(service.name, s)].steady_since(now) for s in others]
            if not ups:
                continue  # every site down: the all_down promise below
            known_up = min(ups) + (health.rise + 1) * health.interval
            start = max(seen_by, known_up, automatic_since)
            allowance = URGENT_WRITE_DEADLINE + self.provider.faulted_seconds(down_since, now)
            allowance += self._instance_gaps(down_since, now, service)
            edits = [t for t in self._drifted.get(service.name, []) if t <= now]
            if edits and edits[-1] >= start - RECONCILE:
                # A hand edit is found by the next reconcile's read, not by a probe.
                start = max(start, edits[-1])
                allowance += RECONCILE
            if now > start + allowance:
                self.fail(
                    f"{service.name}: {site} down since {down_since:.1f}, still weight {weight} "
                    f"(held {held}), {others} up; deadline was {start + allowance:.1f}"
                )

    def _check_all_down(self, service: Any, held: dict[str, int], now: float) -> None:
        """``all_down: all``: once every site is seen down, every site serves, within the
        same deadline as a failover (never an empty answer is checked on every write)."""
        state = self.engine.states.get(service.name)
        if service.all_down != "all" or state is None or state.held or not held:
            return
        truths = [self.truth[(service.name, s)] for s in service.site_names]
        if any(t.up(now) for t in truths):
            return
        all_down_since = max(t.steady_since(now) for t in truths)
        health = service.health
        start = max(
            all_down_since + (health.fall + 1) * health.interval,
            self._automatic_since.get(service.name, now),
        )
        allowance = URGENT_WRITE_DEADLINE + self.provider.faulted_seconds(all_down_since, now)
        allowance += self._instance_gaps(all_down_since, now, service)
        if now > start + allowance and not all(held.get(s, 0) > 0 for s in service.site_names):
            self.fail(
                f"{service.name}: every site down since {all_down_since:.1f} with "
                f"all_down=all, the provider holds {held}; deadline was {start + allowance:.1f}"
            )

    def _instance_gaps(self, start: float, end: float, service: Any) -> float:
        """Time the instance was down, plus a start-up's wait for every check's rise."""
        total = 0.0
        for down, up in self.restarted_at:
            started = up + startup_time(service)
            if started >= start and down <= end:
                total += started - max(down, start)
        return total

    def _check_ramp(self, service: Any, now: float) -> None:
        """A ramp never steps back within the same move, and never faster than
        ``step_duration`` from when the provider took the previous step."""
        name = service.name
        before, after = self._previous.get(name), self.engine.states.get(name)
        self._previous[name] = after  # type: ignore[assignment]
        if before is None or after is None or before.ramp is None or after.ramp is None:
            return
        if before.ramp.to != after.ramp.to or before.ramp.reason != after.ramp.reason:
            return
        if after.ramp.step < before.ramp.step:
            self.fail(f"{name}: ramp stepped back {before.ramp.step} -> {after.ramp.step}")
        if after.ramp.step > before.ramp.step:
            applied = before.applied_at
            if applied is None:
                self.fail(f"{name}: stepped to {after.ramp.step} before the step was applied")
            hold = service.failback.step_duration
            if after.ramp.since - max(before.ramp.since, applied) < hold - 1e-6:
                self.fail(f"{name}: step {after.ramp.step} after less than {hold}s")

    def _check_journal_matches_provider(self) -> None:
        """Every write the provider answered as done is journaled once per service it
        changed, with the weights the provider then held."""
        done: dict[str, int] = {}
        for landed in self.provider.landed:
            if landed.answered_ok:
                for name in landed.weights:
                    done[name] = done.get(name, 0) + 1
        if done != self._journaled_writes:
            self.fail(f"provider writes {done} but journaled {self._journaled_writes}")

    def journaled(self, entries: list[JournalEntry]) -> None:
        for entry in entries:
            self.journal.append(entry)
            if entry.kind in (EventKind.PROVIDER_CHANGE, EventKind.DRIFT):
                name = entry.service
                self._journaled_writes[name] = self._journaled_writes.get(name, 0) + 1
                written = entry.data.get("written")
                held = self.provider.site_weights(name)
                # The records the write changed hold what it says. (A read that lied can
                # leave another site's record out of the write: whole-service writes would
                # close that; the reconcile corrects it, and the end state is checked.)
                if isinstance(written, dict) and any(held.get(s) != w for s, w in written.items()):
                    # Listeners are guarded (an observer never stops a change): say it later.
                    self.provider.violations.append(
                        f"t={self.loop.time():.1f} {name}: journaled {written} but the "
                        f"provider holds {held}"
                    )

    def _check_converged(self) -> None:
        """Faults off and every site up for ``calm``: the provider holds what decide()
        says, and all_down is over."""
        engine = self.engine
        for service in self.config.services:
            name = service.name
            state = engine.states[name]
            health = engine.service_health(name)
            again = decide(service, state, health, self.loop.time()).state
            if again.shares != state.shares:
                self.fail(f"{name}: not settled: decided {state.shares}, decide now {again.shares}")
            held = self.provider.site_weights(name)
            if state.shares is not None and held != state.shares:
                self.fail(f"{name}: provider holds {held}, decided {state.shares}")
            if state.all_down:
                self.fail(f"{name}: still all_down after {self.calm}s of every site up")


class _JournalTap(EngineListener):
    """A listener that hands every journaled entry to the simulation."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def journaled(self, entries: Sequence[JournalEntry]) -> None:
        self.sim.journaled(list(entries))


def simulate(seed: int, **kwargs: Any) -> list[str]:
    """The violations of one seeded run, quietly: the engine's log is off meanwhile (and
    put back after, for the tests that read it)."""
    logger = logging.getLogger("trafficflip")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return Simulation(seed, **kwargs).run()
    finally:
        logger.setLevel(level)


def _log_on_virtual_time(sim: Simulation, level: int) -> None:
    """Log lines stamped with the simulation's virtual time (``--verbose``)."""
    logging.basicConfig(level=level, format="%(vtime)s %(message)s", force=True)
    logging.getLogger("trafficflip").setLevel(level)
    factory = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.vtime = "" if sim.loop.is_closed() else f"t={sim.loop.time():7.2f}"
        return record

    logging.setLogRecordFactory(stamped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--verbose", action="store_true", help="log the engine at INFO")
    args = parser.parse_args(argv)
    failed = 0
    for seed in args.seed:
        sim = Simulation(seed)
        _log_on_virtual_time(sim, logging.INFO if args.verbose else logging.CRITICAL)
        violations = sim.run()
        print(f"seed {seed}: {violations[0] if violations else 'ok'}")
        failed += bool(violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
