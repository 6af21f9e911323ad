"""A command is applied once (issue 22 B8), even while the store refuses its completion:
a real SQLite file whose write lock another connection holds, as in the measured case."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.test_engine import config
from trafficflip.backend.testing import MemoryProvider
from trafficflip.decision.model import ProbeResult
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import SqliteStateStore


async def test_a_command_is_applied_once_while_its_completion_cannot_be_stored(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    path = str(tmp_path / "state.db")
    store = SqliteStateStore(path)
    provider = MemoryProvider()
    clock = Clock(monotonic=lambda: now[0], wall=lambda: now[0])
    engine = Engine(config().services, store, {"mem": provider}, clock)
    for key in engine.jobs:
        for _ in range(2):
            engine.observe(key, ProbeResult(True, "ok", 0.001, now[0]))
    await engine.tick()
    await engine.idle()
    assert engine.writer is not None and engine.writer.flush()
    command_id = store.submit("www", "failover", {"to": "dr"}, "cli")
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the writer's transactions now wait on it
    try:
        now[0] += 1
        before = engine.states["www"]
        first = engine.take_commands()
        assert first[command_id].ok and engine.states["www"] != before
        # The operator changes their mind before the completion could be stored.
        assert engine.execute("www", "failback", {}, "api").ok
        failed_back = engine.states["www"]
        for _ in range(5):
            now[0] += 1
            assert engine.take_commands() == {}  # still pending in the store, not re-applied
        assert engine.states["www"] == failed_back
        assert [c.id for c in store.pending()] == [command_id]
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert engine.writer.flush(timeout=30)
    assert store.pending() == [] and store.command_result(command_id) is not None
    moves = [e.message for e in store.journal("www") if "by cli" in e.message]
    assert len(moves) == 1, moves
    await engine.close()
    store.close()
