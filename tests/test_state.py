from __future__ import annotations

from pathlib import Path

import pytest

from trafficflip.decision.model import JournalEntry, Ramp, ServiceState
from trafficflip.errors import ConfigError
from trafficflip.runtime.state import (
    ChangeRecord,
    SqliteStateStore,
    WriteBatch,
    open_store,
    sqlite_path,
)


def test_state_and_journal_survive_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/state.db"
    store = open_store(url)
    state = ServiceState(
        members=("dr",),
        ramp=Ramp(("primary",), 1, 123.0, "failback"),
        shares={"primary": 25, "dr": 75},
        applied_at=124.0,
        pinned=None,
        drained=("x",),
        failback_approved=True,
        held=True,
        order=("dr", "primary"),
    )
    store.save("www", state, [JournalEntry(1.0, "www", "failover", "primary down", {"a": 1})])
    store.record_change(ChangeRecord("www", "aws", ("C1",), 2.0, False, None))
    store.close()
    again = open_store(url)
    assert again.load("www") == state
    assert again.load("other") is None
    assert [(e.kind, e.data) for e in again.journal("www")] == [("failover", {"a": 1})]
    assert again.last_change("www") == ChangeRecord("www", "aws", ("C1",), 2.0, False, None)
    again.close()


def test_commands_queue_until_taken(tmp_path: Path) -> None:
    writer = SqliteStateStore(str(tmp_path / "s.db"))
    reader = SqliteStateStore(str(tmp_path / "s.db"))
    command_id = writer.submit("www", "failover", {"to": "dr"}, "cli")
    [pending] = reader.pending()
    assert (pending.service, pending.name, pending.args) == ("www", "failover", {"to": "dr"})
    assert writer.command_result(command_id) is None
    reader.complete(command_id, "ok")
    assert reader.pending() == [] and writer.command_result(command_id) == "ok"
    writer.close()
    reader.close()


def test_state_urls() -> None:
    assert sqlite_path("sqlite:////var/lib/trafficflip/state.db") == "/var/lib/trafficflip/state.db"
    assert sqlite_path("sqlite:///trafficflip.db") == "trafficflip.db"
    with pytest.raises(ConfigError, match="unsupported state URL"):
        sqlite_path("postgres://x")


def test_journal_retention_by_age_and_by_count() -> None:
    store = SqliteStateStore(":memory:")
    old = [JournalEntry(100.0 + i, "www", "command", f"old {i}") for i in range(5)]
    new = [JournalEntry(1000.0 + i, "www", "command", f"new {i}") for i in range(10)]
    store.write(WriteBatch({}, old + new, {}, {}))
    assert store.prune(before=500.0, keep=1_000_000) == 5
    assert [e.message for e in store.journal(limit=100)][0] == "new 0"
    store.prune(before=0.0, keep=3)
    assert [e.message for e in store.journal(limit=100)] == ["new 7", "new 8", "new 9"]
    store.close()
