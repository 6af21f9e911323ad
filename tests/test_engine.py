"""The reconcile step with an in-memory provider whose failures the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.factories import service_data
from trafficflip.backend.testing import MemoryConfig, MemoryProvider
from trafficflip.config.loader import Config, ProviderSpec, load_config
from trafficflip.decision.commands import CommandResult
from trafficflip.decision.model import Answer, ProbeResult
from trafficflip.errors import PermanentProviderError, TransientProviderError
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import SqliteStateStore


def config(services: int = 1) -> Config:
    data: dict[str, Any] = {
        "providers": {},
        "services": [
            service_data(
                "www" if i == 0 else f"s{i}",
                provider="mem",
                record=f"s{i}.example.com.",
                ttl=1,
                health={"interval": 1, "timeout": 0.5, "fall": 2, "rise": 2},
                failback={"stabilize": 0, "steps": [50, 100], "step_duration": 1},
            )
            for i in range(services)
        ],
    }
    # The memory provider is not an installed entry point: validate the rest, then add it.
    data["providers"] = {"mem": {"type": "route53"}}
    loaded = load_config(data=data)
    return Config(loaded.settings, {"mem": ProviderSpec("mem", MemoryProvider, MemoryConfig())})


class Rig:
    def __init__(self, services: int = 1, clock: Clock | None = None) -> None:
        """``clock`` replaces the test's hand-moved ``now`` (a virtual-time loop's)."""
        self.now = 1000.0
        self.provider = MemoryProvider()
        self.store = SqliteStateStore(":memory:")
        clock = clock or Clock(monotonic=lambda: self.now, wall=lambda: self.now)
        self.engine = Engine(config(services).services, self.store, {"mem": self.provider}, clock)

    def probe(self, site: str, ok: bool, times: int = 2) -> None:
        port = 1 if site == "primary" else 2
        for key in self.engine.jobs:
            if f"127.0.0.1:{port}" in key:
                for _ in range(times):
                    self.engine.observe(
                        key, ProbeResult(ok, "ok" if ok else "connect refused", 0.001, self.now)
                    )

    async def reconcile(self) -> None:
        await self.engine.reconcile()
        await self.settle()

    async def tick(self) -> None:
        await self.engine.tick()
        await self.settle()

    async def settle(self) -> None:
        """Let requested convergences run, and their records reach the store."""
        await self.engine.idle()
        assert self.engine.writer is not None and self.engine.writer.flush()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_no_change_until_every_site_finished_its_rise_probes() -> None:
    rig = Rig()
    rig.probe("primary", True)
    await rig.settle()
    assert rig.provider.applies == 0
    rig.probe("dr", True)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}


async def test_failover_is_applied_in_the_tick_the_site_turns_down() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.probe("primary", False, times=1)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}  # one failure is not enough
    rig.probe("primary", False, times=1)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}


async def test_a_transient_failure_keeps_the_pending_failover_and_retries_it() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.fail = lambda: TransientProviderError("network down")
    rig.probe("primary", False)
    await rig.settle()
    assert rig.engine.states["www"].shares == {"primary": 0, "dr": 100}  # decided and stored
    assert rig.store.load("www") == rig.engine.states["www"]
    assert rig.engine.provider_status["mem"].ok is False
    rig.provider.fail = None
    # No new probe result: the engine's own retry lands it.
    await until(lambda: rig.provider.weights("www") == {"primary": 0, "dr": 100})
    assert rig.engine.provider_status["mem"].ok


async def test_a_permanent_failure_is_not_hammered() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    calls = 0

    def refuse() -> Exception:
        nonlocal calls
        calls += 1
        return PermanentProviderError("access denied", kind="AccessDenied")

    rig.provider.fail = refuse
    rig.probe("primary", False)
    await rig.settle()
    assert calls == 1
    assert rig.engine.syncs["mem"].retry_at is None
    kinds = [e.kind for e in rig.store.journal("www")]
    assert "provider_error" in kinds
    rig.provider.fail = None
    await rig.reconcile()  # the reconcile interval retries it
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}


async def test_reconcile_corrects_drift_and_journals_it() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.answers["www"]["dr"] = Answer("dr", frozenset({"198.51.100.20"}), 100, 1)
    await rig.reconcile()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}
    assert rig.store.journal("www")[-1].kind == "drift"


async def test_services_flipping_together_go_in_one_apply() -> None:
    rig = Rig(services=50)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    before = rig.provider.applies
    rig.probe("primary", False)
    await rig.settle()
    assert rig.provider.applies == before + 1
    assert all(rig.provider.weights(s)["dr"] == 100 for s in rig.engine.services)


async def test_the_ramp_advances_only_after_the_step_was_applied_and_held() -> None:
    rig = Rig()
    rig.probe("primary", False), rig.probe("dr", True)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
    rig.probe("primary", True)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 50, "dr": 50}
    rig.now += 0.5
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 50, "dr": 50}
    rig.now += 0.5
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}


@pytest.mark.parametrize("command", ["hold"])
async def test_commands_from_the_store_are_taken_on_tick(command: str) -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    command_id = rig.store.submit("www", command, {"reason": "change window"}, "cli")
    bad_id = rig.store.submit("www", "failover", {"to": "mars"}, "cli")
    await rig.tick()
    assert CommandResult.decode(rig.store.command_result(command_id) or "").ok
    assert "has no site 'mars'" in (rig.store.command_result(bad_id) or "")
    rig.probe("primary", False)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}  # held
    assert "hold: automatic changes frozen (change window) by cli" in [
        e.message for e in rig.store.journal("www")
    ]


async def test_one_refused_service_does_not_hold_back_the_others() -> None:
    rig = Rig(services=3)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.refuse = frozenset({"s1"})
    rig.probe("primary", False)
    await rig.settle()
    assert rig.provider.weights("www")["dr"] == 100
    assert rig.provider.weights("s2")["dr"] == 100
    assert rig.provider.weights("s1")["dr"] == 0
    # The services that landed count as applied (their ramps may go on); only s1 failed.
    assert rig.engine.states["www"].applied_at is not None
    assert rig.engine.states["s1"].applied_at is None
    assert rig.store.journal("www")[-1].kind == "provider_change"
    assert rig.store.journal("s1")[-1].kind == "provider_error"
    rig.provider.refuse = frozenset()
    await rig.reconcile()
    assert rig.provider.weights("s1")["dr"] == 100


async def test_lagging_instances_reach_the_provider_status() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.provider.lagging_instances = ("/run/haproxy-b.sock",)
    await rig.reconcile()
    assert rig.engine.provider_status["mem"].lagging == ("/run/haproxy-b.sock",)
    rig.provider.lagging_instances = ()
    await rig.reconcile()
    assert rig.engine.provider_status["mem"].lagging == ()


class GatedProvider(MemoryProvider):
    """Holds each apply until the test opens the gate: a call in flight, on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = asyncio.Event()
        # Failures that start once the call in flight has landed.
        self.then_fail: Callable[[], Exception] | None = None

    async def _apply(self, plan: Any) -> Any:
        self.in_flight.set()
        await self.gate.wait()
        self.in_flight.clear()
        receipt = await super()._apply(plan)
        self.fail = self.then_fail
        return receipt


async def test_a_step_counts_as_applied_only_when_its_own_plan_reached_the_provider() -> None:
    rig = Rig()
    provider = rig.provider = GatedProvider()
    rig.engine = Engine(config().services, rig.store, {"mem": provider}, rig.engine.clock)
    rig.probe("primary", False), rig.probe("dr", True)
    await rig.settle()
    rig.probe("primary", True)  # failback starts: the 50 % step goes out ...
    provider.gate.clear()
    await rig.engine.tick()
    await asyncio.wait_for(provider.in_flight.wait(), 5)
    assert rig.engine.states["www"].shares == {"primary": 50, "dr": 50}
    rig.probe("primary", False)  # ... and while it is in flight, the primary fails again
    assert rig.engine.states["www"].shares == {"primary": 0, "dr": 100}
    provider.then_fail = lambda: TransientProviderError("network down")  # no follow-up lands
    provider.gate.set()
    await rig.settle()
    assert provider.weights("www") == {"primary": 50, "dr": 50}
    # The 50 % plan returned, but it was not the plan for the current decision.
    assert rig.engine.states["www"].applied_at is None
    provider.fail = None
    await until(lambda: provider.weights("www") == {"primary": 0, "dr": 100})
    await until(lambda: rig.engine.states["www"].applied_at is not None)


async def test_decisions_made_together_go_out_in_one_call() -> None:
    rig = Rig(services=50)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    before = rig.provider.applies
    rig.probe("primary", False)  # one shared check: fifty failovers at once
    await rig.settle()
    assert rig.provider.applies - before == 1
    assert all(rig.provider.weights(n)["dr"] == 100 for n in rig.engine.services)


async def test_a_wall_clock_step_neither_hurries_nor_stalls_a_step_hold() -> None:
    """Decisions run on the monotonic clock: the wall clock jumping an hour ahead (or two
    minutes back) changes nothing about when the next step is due."""
    rig = Rig()
    wall = {"offset": 0.0}
    rig.engine.clock = Clock(monotonic=lambda: rig.now, wall=lambda: rig.now + wall["offset"])
    rig.probe("primary", False), rig.probe("dr", True)
    await rig.settle()
    rig.probe("primary", True)
    await rig.settle()
    assert rig.provider.weights("www") == {"primary": 50, "dr": 50}
    wall["offset"] = 3600.0  # an NTP step forward
    rig.now += 0.5
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 50, "dr": 50}  # held: half a step
    wall["offset"] = -120.0  # and back
    rig.now += 0.5
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 100, "dr": 0}  # due, in real time
