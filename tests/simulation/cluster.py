"""The fault simulation in cluster mode: two instances, a lease on virtual time, partitions.

Each instance is a real ``ClusterEngine`` with its providers fenced by an authority that
answers from its own view of the lease (``may_act``: leading, and the lease outlasts the
call by the margin). The lease itself is etcd's view: a holder and an expiry. A partition
cuts one instance off from the lease (it cannot renew, it still reaches the provider), so
the other is elected once the lease expires; a healed instance learns it lost. Probes feed
each instance's own health (its vantage is its vote).

Checked at every step, beside the single-instance promises: **one writer** (every write that
lands at the provider was sent by the instance etcd said held the lease, within its expiry)
and **no stale term** (a state queued in a term that ended is never stored).

Replay: ``.venv/bin/python -m tests.simulation.cluster --seed N [--verbose]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from dataclasses import dataclass
from typing import Any

from tests.simulation.run import STEP, Violation
from tests.simulation.vloop import VirtualTimeLoop
from tests.simulation.world import (
    EPOCH,
    FAULTS,
    Burst,
    PumpedWriter,
    SimProvider,
    SiteTruth,
    build_config,
    probe_result,
    random_services,
)
from trafficflip.backend.provider import Receipt
from trafficflip.cluster.engine import ClusterEngine
from trafficflip.decision.plan import Plan
from trafficflip.errors import NotLeaderError
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import SqliteStateStore, WriteBatch

TTL = 6.0
MARGIN = TTL / 4  # as cluster/election.py: the margin, and the longest call it vouches for
CHAOS, CALM = 180.0, 90.0


@dataclass
class Lease:
    """etcd's view: who holds the leader key, until when, and its term (revision)."""

    holder: str | None = None
    expires: float = 0.0
    term: int = 0


class TermStore(SqliteStateStore):
    """The shared store, fenced like etcd's txn: states of a term that is not the holder's
    current one are refused (the journal lines are kept: they are history)."""

    def __init__(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(":memory:")
        self.lease, self.loop = lease, loop
        self.stale_landed: list[str] = []

    def write(self, batch: WriteBatch) -> None:
        term = getattr(batch, "term", 0)
        current = self.lease.term if self.loop.time() < self.lease.expires else -1
        if batch.states and term != current:
            super().write(WriteBatch({}, batch.entries, {}, {}))
            raise NotLeaderError(f"term {term} ended (now {current})")
        super().write(batch)


class FencedSimProvider(SimProvider):
    """The shared backend as one instance reaches it: its writes ask its authority at the
    call edge (as every adapter does), and each landed write is checked against etcd."""

    def __init__(self, sim: ClusterSimulation, owner: str, backend: SimProvider) -> None:
        super().__init__(backend._time, from_known=backend.PLAN_URGENT_FROM_KNOWN, spacing=0)
        self.WRITE_SPACING = backend.WRITE_SPACING  # type: ignore[misc]
        self.sim, self.owner = sim, owner
        self.answers = backend.answers  # one backend, two clients
        self.bursts, self.latency = backend.bursts, backend.latency
        self.landed, self.violations = backend.landed, backend.violations
        self.snapshots = backend.snapshots

    async def _apply(self, plan: Plan) -> Receipt:
        slowest = self.latency * 20
        self.may_write("apply", slowest)
        receipt = await super()._apply(plan)
        lease, now = self.sim.lease, self._time()
        if lease.holder != self.owner or now >= lease.expires:
            self.violations.append(
                f"t={now:.2f} two writers: {self.owner} wrote while etcd says "
                f"{lease.holder} holds the lease until {lease.expires:.2f}"
            )
        return receipt


class Instance:
    """One trafficflip instance: its engine, its writer and its view of the lease."""

    def __init__(self, sim: ClusterSimulation, name: str) -> None:
        self.sim, self.name = sim, name
        self.partitioned = False
        self.deadline = 0.0  # its own view: the lease is ours until then
        self.term = 0
        self.believes = False
        loop = sim.loop
        clock = Clock(monotonic=loop.time, wall=lambda: EPOCH + loop.time())
        self.writer = PumpedWriter(sim.store)
        provider = FencedSimProvider(sim, name, sim.backend)
        self.engine = ClusterEngine(
            sim.config.services,
            sim.store,
            {"mem": provider},
            leading=self.leading,
            authority=self,
            observed=lambda key, result: None,
            refused=lambda: None,
            term=lambda: self.term if self.leading() else 0,
            clock=clock,
            writer=self.writer,
            rng=random.Random(sim.rng.random()),
        )

    def leading(self) -> bool:
        return self.believes and self.sim.loop.time() < self.deadline

    def may_act(self, timeout: float) -> bool:
        return self.leading() and self.sim.loop.time() + timeout + MARGIN <= self.deadline

    def call_limit(self) -> float:
        return MARGIN

    def elect(self) -> None:
        """One round of the election loop (every third of the TTL)."""
        lease, now = self.sim.lease, self.sim.loop.time()
        if self.believes and now >= self.deadline:
            self._demote()
        if self.partitioned:
            return
        if lease.holder == self.name and now < lease.expires:
            lease.expires = self.deadline = now + TTL
        elif lease.holder is None or now >= lease.expires:
            lease.term += 1
            lease.holder, lease.expires = self.name, now + TTL
            self.term, self.deadline, self.believes = lease.term, now + TTL, True
            self.engine.take_over()
            self.sim.loop.create_task(self.engine.reconcile())
        elif self.believes:
            self._demote()

    def _demote(self) -> None:
        self.believes = False
        self.engine.demote()


class ClusterSimulation:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop(start=0.0)
        self.config = build_config(random_services(self.rng))
        self.backend = SimProvider(
            self.loop.time, from_known=self.rng.random() < 0.5, spacing=self.rng.choice([0, 1])
        )
        self.backend.latency = self.rng.choice([0.01, 0.05, 0.2])
        self.lease = Lease()
        self.store = TermStore(self.lease, self.loop)
        self.truth = {
            (s.name, site): SiteTruth() for s in self.config.services for site in s.site_names
        }
        self.instances = [Instance(self, "a"), Instance(self, "b")]
        self.partitions: list[tuple[float, float, Instance]] = []
        self._plan()

    def _plan(self) -> None:
        rng = self.rng
        for truth in self.truth.values():
            for _ in range(rng.randint(0, 3)):
                start = rng.uniform(5, CHAOS)
                truth.changes.append((start, False))
                truth.changes.append((start + rng.uniform(2, 40), True))
            truth.changes.sort()
        for _ in range(rng.randint(0, 3)):
            start = rng.uniform(0, CHAOS)
            self.backend.bursts.append(
                Burst(start, start + rng.uniform(0.5, 15), rng.choice(FAULTS))
            )
        for _ in range(rng.randint(1, 3)):  # a partition of one instance from etcd
            start = rng.uniform(5, CHAOS)
            self.partitions.append((start, start + rng.uniform(2, 30), rng.choice(self.instances)))
            if rng.random() < 0.7:
                # The bad day: the provider fails around the cut and a site dies in it, so
                # the instance cut off holds a failover it could not write yet.
                begin = start - rng.uniform(0, 3)
                kind = rng.choice(["throttle", "error", "lands_then_errors"])
                self.backend.bursts.append(Burst(begin, begin + rng.uniform(2, 12), kind))
                service, site = rng.choice(sorted(self.truth))
                truth = self.truth[(service, site)]
                truth.changes.append((start - rng.uniform(0, 2), False))
                truth.changes.append((start + rng.uniform(5, 30), True))
                truth.changes.sort()

    def fail(self, message: str) -> None:
        raise Violation(f"cluster seed {self.seed} t={self.loop.time():.2f}: {message}")

    def run(self) -> list[str]:
        try:
            broken = self.loop.run_to_the_end(self._main())
        finally:
            self.store.close()
        return [broken] if broken else []

    async def _main(self) -> None:
        for instance in self.instances:
            engine = instance.engine
            self.loop.create_task(self._every(TTL / 3, instance.elect))
            self.loop.create_task(self._every_async(1.0, engine.tick))
            self.loop.create_task(self._every_async(10.0, engine.reconcile))
            for key, job in engine.jobs.items():
                owner = self._owner(engine, key)
                self.loop.create_task(self._probing(engine, key, owner, job.health.interval))
        while self.loop.time() < CHAOS + CALM:
            await asyncio.sleep(STEP)
            now = self.loop.time()
            for instance in self.instances:
                instance.partitioned = any(
                    start <= now < end and who is instance for start, end, who in self.partitions
                )
                instance.writer.pump()
            if self.backend.violations:
                self.fail(self.backend.violations[0])
            for service in self.config.services:
                held = self.backend.site_weights(service.name)
                if held and not any(held.values()):
                    self.fail(f"{service.name}: empty answer {held}")
        self._check_converged()

    def _check_converged(self) -> None:
        leaders = [i for i in self.instances if i.leading()]
        if len(leaders) != 1:
            self.fail(f"after the calm, {len(leaders)} instances lead")
        engine = leaders[0].engine
        for service in self.config.services:
            state = engine.states[service.name]
            held = self.backend.site_weights(service.name)
            if state.shares is not None and held != state.shares:
                self.fail(
                    f"{service.name}: provider holds {held}, the leader decided {state.shares}"
                )

    @staticmethod
    def _owner(engine: Engine, key: str) -> tuple[str, str]:
        for name, runtime in engine.services.items():
            for site, keys in runtime.site_checks.items():
                if key in keys:
                    return name, site
        raise KeyError(key)

    async def _every(self, interval: float, job: Any) -> None:
        while True:
            job()
            await asyncio.sleep(interval)

    async def _every_async(self, interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            self.loop.create_task(job())

    async def _probing(
        self, engine: Engine, key: str, owner: tuple[str, str], interval: float
    ) -> None:
        await asyncio.sleep(self.rng.uniform(0, interval))
        while True:
            now = self.loop.time()
            # This vantage's probe is its vote (the vote itself is tested with real etcd).
            Engine.observe(engine, key, probe_result(self.truth[owner].up(now), now))
            await asyncio.sleep(interval)


def simulate_cluster(seed: int) -> list[str]:
    logger = logging.getLogger("trafficflip")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return ClusterSimulation(seed).run()
    finally:
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0
    for seed in args.seed:
        run = ClusterSimulation(seed).run if args.verbose else lambda s=seed: simulate_cluster(s)
        violations = run()
        print(f"cluster seed {seed}: {violations[0] if violations else 'ok'}")
        failed += bool(violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
