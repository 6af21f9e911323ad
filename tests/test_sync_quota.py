"""How the provider sync spends a quota-bound backend's calls: failovers written from what
was last read or written (no read first), and writes spaced so decisions share calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.test_engine import Rig, config, until
from trafficflip.backend.testing import MemoryProvider
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.errors import TransientProviderError
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.sync import _listed


class QuotaProvider(MemoryProvider):
    """Counts reads and can fail its next apply once."""

    def __init__(self, *, from_known: bool, spacing: float = 0.0) -> None:
        super().__init__()
        self.reads = 0
        self.fail_next_apply = False
        self.write_times: list[float] = []
        self.read_first: list[bool] = []
        # Declared per instance here; real adapters declare them on the class.
        self.PLAN_URGENT_FROM_KNOWN = from_known  # type: ignore[misc]
        self.WRITE_SPACING = spacing  # type: ignore[misc]

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        self.reads += 1
        return await super().read(services)

    async def _apply(self, plan: Any) -> Any:
        self.write_times.append(time.monotonic())
        self.read_first.append(plan.read_first)
        if self.fail_next_apply:
            self.fail_next_apply = False
            raise TransientProviderError("connection reset")
        return await super()._apply(plan)


def rig_with(provider: QuotaProvider, services: int = 1) -> Rig:
    rig = Rig(services)
    rig.provider = provider
    rig.engine = Engine(config(services).services, rig.store, {"mem": provider}, rig.engine.clock)
    return rig


@pytest.mark.parametrize("from_known", [True, False])
async def test_a_failover_is_written_without_a_read_where_the_provider_allows(
    from_known: bool,
) -> None:
    provider = QuotaProvider(from_known=from_known)
    rig = rig_with(provider)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    reads = provider.reads
    rig.probe("primary", False)
    await rig.settle()
    assert provider.weights("www") == {"primary": 0, "dr": 100}
    assert provider.reads == reads + (0 if from_known else 1)
    # Only a plan made from a read may tell the adapter that what it creates is absent.
    assert provider.read_first == [True, not from_known]
    await rig.reconcile()  # the reconcile always reads: drift is still found
    assert provider.reads == reads + (1 if from_known else 2)


async def test_after_a_failed_write_the_retry_reads_first() -> None:
    provider = QuotaProvider(from_known=True)
    rig = rig_with(provider)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    reads = provider.reads
    provider.fail_next_apply = True
    rig.probe("primary", False)
    await rig.settle()  # the failure: a retry is due after the backoff
    assert provider.weights("www") == {"primary": 100, "dr": 0}
    sync = rig.engine.syncs["mem"]
    assert sync.retry_at is not None
    rig.now = sync.retry_at
    await until(lambda: provider.weights("www") == {"primary": 0, "dr": 100})
    assert provider.reads == reads + 1  # what the backend holds was not known any more


async def test_decisions_made_within_the_spacing_share_the_next_call() -> None:
    spacing = 0.3
    provider = QuotaProvider(from_known=True, spacing=spacing)
    rig = rig_with(provider, services=3)
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    writes = len(provider.write_times)
    rig.now += 1  # a quiet spell since the initial write
    rig.engine.execute("s1", "failover", {"to": "dr"}, "test")
    await asyncio.sleep(0.01)  # the first write after a quiet spell goes at once
    assert len(provider.write_times) == writes + 1
    rig.engine.execute("s2", "failover", {"to": "dr"}, "test")
    await asyncio.sleep(0.01)
    rig.engine.execute("www", "failover", {"to": "dr"}, "test")
    await rig.settle()
    assert len(provider.write_times) == writes + 2  # s2 and www together
    first, second = provider.write_times[-2:]
    assert second - first >= spacing - 0.01
    assert all(provider.weights(n)["dr"] == 50 for n in ("s1", "s2", "www"))  # first step


def test_a_provider_error_log_line_names_ten_services_at_most() -> None:
    # A failed call of a large zone names thousands of services; each journal has them all.
    assert _listed(["a", "b"]) == "a,b"
    names = [f"s{i}" for i in range(10_000)]
    assert _listed(names) == ",".join(names[:10]) + " and 9990 more"
