"""The simulated world: sites whose health follows a schedule, a provider that fails on
demand, a store whose writes the simulation pumps, and the real engine running on them.

Everything runs on ``VirtualTimeLoop``; randomness comes from one seeded ``random.Random``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.factories import service_data
from trafficflip.backend.provider import Receipt
from trafficflip.backend.testing import MemoryConfig, MemoryProvider
from trafficflip.config.loader import Config, ProviderSpec, load_config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer, JournalEntry, ProbeResult
from trafficflip.decision.plan import Plan
from trafficflip.errors import NotLeaderError, PermanentProviderError, TransientProviderError
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import SqliteStateStore
from trafficflip.runtime.writer import StateWriter

# Wall-clock epoch seconds at virtual time 0 (maintenance expiries are on the wall clock).
EPOCH = 1_790_000_000.0
# Provider fault kinds a burst is made of.
FAULTS = ("throttle", "error", "permanent", "lands_then_errors", "stale_read", "slow")
SLOW = 20  # a slow call takes this many times the provider's usual latency


@dataclass
class Burst:
    """Between ``start`` and ``end`` every provider call meets ``kind``."""

    start: float
    end: float
    kind: str


@dataclass
class Landed:
    """A write the provider took: when, and each changed service's weights after it."""

    at: float
    weights: dict[str, dict[str, int]]
    answered_ok: bool


class SimProvider(MemoryProvider):
    """An in-memory backend with fault bursts, call latency and a history of its answers."""

    TYPE = "memory"

    def __init__(self, loop_time: Any, *, from_known: bool, spacing: float) -> None:
        super().__init__("mem")
        self.PLAN_URGENT_FROM_KNOWN = from_known  # type: ignore[misc]
        self.WRITE_SPACING = spacing  # type: ignore[misc]
        self._time = loop_time
        self.bursts: list[Burst] = []
        self.latency = 0.05
        self.landed: list[Landed] = []
        self.snapshots: list[tuple[float, dict[str, dict[str | None, Answer]]]] = []
        self.violations: list[str] = []

    def fault(self) -> str | None:
        now = self._time()
        return next((b.kind for b in self.bursts if b.start <= now < b.end), None)

    def faulted_seconds(self, start: float, end: float) -> float:
        """Seconds of [start, end) during which a burst made calls fail or lie."""
        total = 0.0
        for burst in self.bursts:
            # A call started in a slow burst holds the writes queued behind it until it ends:
            # the sync never overlaps two calls, or an older write could land after a newer.
            until = burst.end + (SLOW * self.latency if burst.kind == "slow" else 0.0)
            total += max(0.0, min(end, until) - max(start, burst.start))
        return total

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        kind = self.fault()
        await asyncio.sleep(self.latency * (SLOW if kind == "slow" else 1))
        if kind in ("throttle", "error", "lands_then_errors"):
            raise TransientProviderError(f"sim {kind} on read", kind=kind)
        if kind == "permanent":
            raise PermanentProviderError("sim permanent on read", kind="permanent")
        held = self.answers
        if kind == "stale_read" and self.snapshots:
            held = self.snapshots[0][1]  # the oldest answers it ever held: a lying read
        return {s.name: tuple(held.get(s.name, {}).values()) for s in services}

    async def _apply(self, plan: Plan) -> Receipt:
        kind = self.fault()
        await asyncio.sleep(self.latency * (SLOW if kind == "slow" else 1))
        if kind == "throttle":
            raise TransientProviderError("sim Throttling", kind="throttled", retry_after=None)
        if kind == "error":
            raise TransientProviderError("sim ServiceUnavailable", kind="ServiceUnavailable")
        if kind == "permanent":
            raise PermanentProviderError("sim AccessDenied", kind="AccessDenied")
        self.snapshots.append((self._time(), {k: dict(v) for k, v in self.answers.items()}))
        self.snapshots = self.snapshots[-20:]
        receipt = await super()._apply(plan)
        changed = {c.service.name for c in plan.changes}
        weights = {name: self.site_weights(name) for name in changed}
        for name, held in weights.items():
            if not any(w > 0 for w in held.values()):
                self.violations.append(f"t={self._time():.1f} {name}: empty answer {held}")
        self.landed.append(Landed(self._time(), weights, kind != "lands_then_errors"))
        if kind == "lands_then_errors":
            raise TransientProviderError("sim timeout after the write landed", kind="timeout")
        return receipt

    def edit_by_hand(self, name: str, rng: random.Random) -> None:
        """Someone else's change: the weights of one service shuffled (never all zero)."""
        held = self.answers.get(name, {})
        weights = [a.weight or 0 for a in held.values()]
        if not any(weights):
            return
        rng.shuffle(weights)
        self.answers[name] = {
            site: Answer(a.site, a.targets, w, a.ttl)
            for (site, a), w in zip(held.items(), weights, strict=True)
        }

    def site_weights(self, name: str) -> dict[str, int]:
        return {
            site: answer.weight or 0
            for site, answer in self.answers.get(name, {}).items()
            if site is not None
        }


class PumpedWriter(StateWriter):
    """The store's writer without its thread: the simulation pumps it, and can make the
    store refuse writes (locked, full) or lose what is queued (a crash)."""

    def __init__(self, store: SqliteStateStore) -> None:
        super().__init__(store)
        self.store = store
        self.failing = False

    def start(self) -> None:
        pass  # no thread: ``pump`` writes

    def pump(self) -> None:
        batch = self._queue.take()
        if not batch:
            return
        if self.failing:
            self._queue.put_back(batch)
            self._failed(OSError("sim: database is locked"))
            return
        try:
            self.store.write(batch)
        except NotLeaderError:
            return  # a term that ended: dropped, never replayed (as the writer's thread does)
        self._recovered()

    def lose(self) -> None:
        """A crash: whatever was not stored yet is gone."""
        self._queue.take()

    def stop(self, timeout: float = 10.0) -> None:
        pass


@dataclass
class SiteTruth:
    """A site's real health over time: a list of (since, up)."""

    changes: list[tuple[float, bool]] = field(default_factory=lambda: [(0.0, True)])

    def up(self, at: float) -> bool:
        state = True
        for since, up in self.changes:
            if since > at:
                break
            state = up
        return state

    def set(self, at: float, up: bool) -> None:
        if self.changes[-1][1] != up:
            self.changes.append((at, up))

    def steady_since(self, at: float) -> float:
        """Since when the site has held its status at ``at``."""
        since = 0.0
        for moment, _ in self.changes:
            if moment > at:
                break
            since = moment
        return since


def random_services(rng: random.Random) -> list[dict[str, Any]]:
    """One to three services with random modes, policies, thresholds and steps."""
    services = []
    for index in range(rng.randint(1, 3)):
        sites = ["primary", "dr", "third"][: rng.choice([2, 2, 3])]
        steps = sorted(rng.sample([10, 25, 50, 75], rng.randint(0, 3))) + [100]
        services.append(
            service_data(
                f"svc{index}",
                provider="mem",
                record=f"svc{index}.example.com.",
                ttl=rng.choice([1, 5, 30]),
                mode=rng.choice(["active-passive", "active-passive", "active-active"]),
                all_down=rng.choice(["keep", "all"]),
                health={
                    "interval": rng.choice([1, 2]),
                    "timeout": 0.5,
                    "fall": rng.randint(1, 3),
                    "rise": rng.randint(1, 3),
                },
                failback={
                    "stabilize": rng.choice([0, 3, 10]),
                    "steps": steps,
                    "step_duration": rng.choice([1, 3, 8]),
                    "allow_short_steps": True,
                },
                sites=[
                    {
                        "name": site,
                        "targets": [f"192.0.2.{10 * index + i + 1}"],
                        "weight": rng.choice([1, 1, 2]),
                        "checks": [{"type": "tcp", "address": f"127.0.0.{index + 1}:{i + 1}"}],
                    }
                    for i, site in enumerate(sites)
                ],
            )
        )
    return services


def build_config(services: list[dict[str, Any]]) -> Config:
    loaded = load_config(data={"providers": {"mem": {"type": "route53"}}, "services": services})
    return Config(loaded.settings, {"mem": ProviderSpec("mem", MemoryProvider, MemoryConfig())})


def engine_on(
    config: Config,
    store: SqliteStateStore,
    provider: SimProvider,
    loop: asyncio.AbstractEventLoop,
    rng: random.Random,
) -> tuple[Engine, PumpedWriter]:
    clock = Clock(monotonic=loop.time, wall=lambda: EPOCH + loop.time())
    writer = PumpedWriter(store)
    engine = Engine(
        config.services,
        store,
        {"mem": provider},
        clock,
        writer=writer,
        rng=random.Random(rng.random()),
    )
    return engine, writer


def probe_result(up: bool, at: float) -> ProbeResult:
    return ProbeResult(up, "ok" if up else "connect refused", 0.001, at)


def entries_of(kind: str, entries: list[JournalEntry], service: str) -> list[JournalEntry]:
    return [e for e in entries if e.kind == kind and e.service == service]
