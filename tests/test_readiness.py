"""Readiness reasons, straight from an engine: the store, and each provider in use."""

from __future__ import annotations

from tests.test_engine import Rig
from trafficflip.operations.api import not_ready


async def test_not_ready_until_the_first_reconcile_then_ready() -> None:
    rig = Rig()
    assert not_ready(rig.engine) == ["provider mem: no reconcile yet"]
    # Nothing is asked of a provider before the start-up probes allowed a decision.
    await rig.engine.reconcile()
    assert not_ready(rig.engine) == ["provider mem: no reconcile yet"]
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    assert not_ready(rig.engine) == []


async def test_an_unreachable_state_store_is_not_ready() -> None:
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    rig.store.close()  # as good as a vanished database file: every query now fails
    reasons = not_ready(rig.engine)
    assert len(reasons) == 1 and reasons[0].startswith("state store: ProgrammingError")
