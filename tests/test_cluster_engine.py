"""The engine's cluster seams with an in-memory provider: only the leader acts, on voted
health, and no provider write happens without lease margin."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from tests.test_engine import config
from trafficflip.backend.testing import MemoryProvider
from trafficflip.cluster.engine import ClusterEngine
from trafficflip.cluster.fencing import FencedProvider
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.model import ProbeResult, Status
from trafficflip.errors import TransientProviderError
from trafficflip.runtime.state import SqliteStateStore


class Rig:
    def __init__(self) -> None:
        self.leading = False
        self.may_write = True
        self.refusals = 0
        self.observed: list[str] = []
        self.provider = MemoryProvider()
        self.store = SqliteStateStore(":memory:")
        self.engine = ClusterEngine(
            config().services,
            self.store,
            {"mem": self.provider},
            leading=lambda: self.leading,
            authority=self,
            observed=lambda key, result: self.observed.append(key),
            refused=self.refused,
        )

    def refused(self) -> None:
        self.refusals += 1

    # The authority port (``backend/provider.py``): the lease, as the test sets it.
    def may_act(self, timeout: float) -> bool:
        return self.may_write

    def call_limit(self) -> float:
        return 1.0

    def vote(self, site: str, status: Status) -> None:
        port = 1 if site == "primary" else 2
        for key in self.engine.jobs:
            if f"127.0.0.1:{port}" in key:
                health = CheckHealth(status, 1000.0, probes=2)
                self.engine.set_check_health(key, health)

    async def settle(self) -> None:
        await self.engine.idle()
        assert self.engine.writer is not None and self.engine.writer.flush()


async def test_a_probe_is_this_vantages_verdict_not_a_decision() -> None:
    rig = Rig()
    rig.leading = True
    key = next(iter(rig.engine.jobs))
    rig.engine.observe(key, ProbeResult(False, "connect refused", 0.001, 1000.0))
    assert rig.observed == [key]
    assert rig.engine.checks[key].status is Status.UNKNOWN and rig.engine.checks[key].probes == 0


async def test_a_follower_decides_nothing_and_writes_nothing() -> None:
    rig = Rig()
    rig.vote("primary", Status.UP)
    rig.vote("dr", Status.UP)
    await rig.settle()
    await rig.engine.tick()
    await rig.engine.reconcile()
    assert rig.provider.applies == 0 and rig.store.load("www") is None
    assert rig.engine.provider_status["mem"].last_success is not None  # it read the provider


async def test_the_leader_acts_on_the_vote() -> None:
    rig = Rig()
    rig.leading = True
    rig.vote("primary", Status.UP)
    rig.vote("dr", Status.UP)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}
    rig.vote("primary", Status.DOWN)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}


async def test_no_provider_write_without_lease_margin() -> None:
    rig = Rig()
    rig.leading = True
    rig.may_write = False  # the lease has less than the margin left
    rig.vote("primary", Status.UP)
    rig.vote("dr", Status.UP)
    await rig.settle()
    assert rig.provider.applies == 0 and rig.refusals == 1
    status = rig.engine.provider_status["mem"]
    assert not status.ok and "not the cluster leader" in status.error
    # The decided change is kept (in the state) and lands once the lease is renewed.
    assert rig.engine.states["www"].shares == {"primary": 100, "dr": 0}
    rig.may_write = True
    await rig.engine.reconcile()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}


async def test_a_new_leader_takes_the_stored_state() -> None:
    rig = Rig()
    stored = replace(rig.engine.states["www"], shares={"primary": 50, "dr": 50}, members=("dr",))
    rig.store.save("www", stored, [])
    rig.engine.take_over()
    assert rig.engine.states["www"] == stored


async def test_a_follower_validates_commands_and_leaves_them_to_the_leader() -> None:
    rig = Rig()
    assert rig.engine.execute("www", "failover", {"to": "dr"}, "api:ops").detail == (
        "queued for the leader"
    )
    bad = rig.engine.execute("www", "failover", {"to": "nowhere"}, "api:ops")
    assert not bad.ok and "has no site 'nowhere'" in bad.detail
    assert rig.engine.take_commands() == {}
    [queued] = rig.store.pending()  # still there for the leader; the bad one never queued
    rig.leading = True
    assert rig.engine.take_commands()[queued.id].ok
    await rig.settle()
    assert rig.store.pending() == []


async def test_a_reload_fences_every_new_provider() -> None:
    """Issue 22 A1: providers built by a reload (SIGHUP, POST /api/v1/reload: both call
    ``Engine.reload``) are fenced as those built at start."""
    rig = Rig()
    rig.leading = True
    fresh = MemoryProvider()
    rig.engine.reload(config().services, {"mem": fresh})
    for provider in [
        *rig.engine.providers.values(),
        *(s.provider for s in rig.engine.syncs.values()),
    ]:
        assert isinstance(provider, FencedProvider) and provider.authority is rig
    assert fresh.authority is rig, "the adapter's own writes ask the lease too"
    rig.may_write = False
    rig.vote("primary", Status.UP)
    rig.vote("dr", Status.UP)
    await rig.settle()
    assert fresh.applies == 0 and rig.refusals >= 1


async def test_losing_leadership_drops_pending_retries() -> None:
    """Issue 22 A1: a deposed leader's sync must not retry its old term's writes."""
    rig = Rig()
    rig.leading = True
    rig.provider.fail = lambda: TransientProviderError("lagging", kind="lagging")
    rig.vote("primary", Status.UP)
    rig.vote("dr", Status.UP)
    await rig.engine.idle()
    sync = rig.engine.syncs["mem"]
    retry_at = sync.retry_at
    assert retry_at is not None and sync.status.pending
    rig.provider.fail = None
    rig.leading = False
    rig.engine.demote()
    assert sync.retry_at is None and sync.status.pending == 0
    # Past the moment the retry was due, and a little more: nothing was sent.
    while time.monotonic() < retry_at + 0.3:
        await asyncio.sleep(0.05)
    assert rig.provider.applies == 0
