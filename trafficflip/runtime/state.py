"""The state store: per-service decisions, operator commands, provider changes and the journal.

``StateStore`` is the interface; ``SqliteStateStore`` the default backend. Every write of a
service's state goes with its journal entries in one transaction, so a crash never leaves a
decision without its record or the other way round.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from trafficflip.decision.model import Expiry, JournalEntry, Ramp, RampReason, ServiceState
from trafficflip.errors import ConfigError


@dataclass(frozen=True)
class Command:
    """An operator command waiting for (or taken by) the running instance."""

    id: int
    at: float
    service: str
    name: str
    args: dict[str, Any]
    source: str


@dataclass(frozen=True)
class ChangeRecord:
    """The last provider change for a service and whether it is confirmed in sync."""

    service: str
    provider: str
    change_ids: tuple[str, ...]
    submitted_at: float
    in_sync: bool
    confirmed_at: float | None


class StateStore(Protocol):
    def load(self, service: str) -> ServiceState | None: ...
    def save(self, service: str, state: ServiceState, entries: Sequence[JournalEntry]) -> None: ...
    def append(self, entries: Sequence[JournalEntry]) -> None: ...
    def journal(self, service: str | None = None, limit: int = 50) -> list[JournalEntry]: ...
    def submit(self, service: str, name: str, args: dict[str, Any], source: str) -> int: ...
    def pending(self) -> list[Command]: ...
    def complete(self, command_id: int, result: str) -> None: ...
    def record_change(self, record: ChangeRecord) -> None: ...
    def last_change(self, service: str) -> ChangeRecord | None: ...
    def write(self, batch: WriteBatch) -> None: ...
    def touch(self) -> None: ...
    def prune(self, before: float, keep: int) -> int: ...
    def for_writer(self) -> StateStore: ...
    def close(self) -> None: ...


@dataclass
class WriteBatch:
    """Everything the writer thread has queued, written in one transaction."""

    states: dict[str, ServiceState]
    entries: list[JournalEntry]
    changes: dict[str, ChangeRecord]
    completed: dict[int, str]
    # Cluster mode: the leader's term (fence revision) the states, changes and results were
    # made in; a store refuses them once that term ended. 0 outside cluster mode.
    term: int = 0

    def __bool__(self) -> bool:
        return bool(self.states or self.entries or self.changes or self.completed)


SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, service TEXT NOT NULL,
    kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_service ON journal(service, id);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, service TEXT NOT NULL,
    name TEXT NOT NULL, args TEXT NOT NULL, source TEXT NOT NULL,
    done_at REAL, result TEXT);
CREATE TABLE IF NOT EXISTS changes (
    service TEXT PRIMARY KEY, provider TEXT NOT NULL, change_ids TEXT NOT NULL,
    submitted_at REAL NOT NULL, in_sync INTEGER NOT NULL, confirmed_at REAL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# In-memory databases shared by a reader and the writer thread are named, one per store.
_MEMORY_NAMES = itertools.count()


def sqlite_path(url: str) -> str:
    """The file of a SQLAlchemy-style URL: ``sqlite:///rel.db``, ``sqlite:////abs.db``."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        return ":memory:"
    if not url.startswith("sqlite:///"):
        raise ConfigError([f"state: unsupported state URL {url!r} (use sqlite:///PATH)"])
    return url.removeprefix("sqlite:///")


def open_store(url: str) -> SqliteStateStore:
    """Open the store named by the ``state`` setting."""
    return SqliteStateStore(sqlite_path(url))


def open_store_read_only(url: str) -> SqliteStateStore | None:
    """The store for reading only, or None when it does not exist: never creates a file."""
    path = sqlite_path(url)
    if path == ":memory:" or not Path(path).exists():
        return None
    return SqliteStateStore(path, read_only=True)


class SqliteStateStore:
    """SQLite in WAL mode: the running instance writes, CLI commands write beside it.

    The service reads on the event loop's connection and writes on the writer thread's
    (``for_writer``): in WAL mode readers never wait for a writer, so a locked or full
    database delays persistence but never the loop.
    """

    def __init__(self, path: str, *, read_only: bool = False, busy_timeout: float = 10.0) -> None:
        self.path = path
        if read_only:
            uri = f"{Path(path).resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
            return
        if path == ":memory:":
            name = f"trafficflip-{os.getpid()}-{next(_MEMORY_NAMES)}"
            self.path = f"file:{name}?mode=memory&cache=shared"
        elif not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path,
            uri=self.path.startswith("file:"),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a decision acknowledged to the provider must survive a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def load(self, service: str) -> ServiceState | None:
        row = self._db.execute("SELECT state FROM services WHERE name = ?", (service,)).fetchone()
        return state_from_json(row[0]) if row else None

    def save(self, service: str, state: ServiceState, entries: Sequence[JournalEntry]) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO services(name, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                (service, state_to_json(state), time.time()),
            )
            self._insert_journal(entries)

    def append(self, entries: Sequence[JournalEntry]) -> None:
        with self._transaction():
            self._insert_journal(entries)

    def _insert_journal(self, entries: Sequence[JournalEntry]) -> None:
        self._db.executemany(
            "INSERT INTO journal(at, service, kind, message, data) VALUES (?, ?, ?, ?, ?)",
            [(e.at, e.service, e.kind, e.message, json.dumps(e.data)) for e in entries],
        )

    def journal(self, service: str | None = None, limit: int = 50) -> list[JournalEntry]:
        where, args = ("WHERE service = ?", (service,)) if service else ("", ())
        rows = self._db.execute(
            f"SELECT at, service, kind, message, data FROM journal {where} "
            "ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [JournalEntry(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in reversed(rows)]

    def submit(self, service: str, name: str, args: dict[str, Any], source: str) -> int:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO commands(at, service, name, args, source) VALUES (?, ?, ?, ?, ?)",
                (time.time(), service, name, json.dumps(args), source),
            )
        return int(cursor.lastrowid or 0)

    def pending(self) -> list[Command]:
        rows = self._db.execute(
            "SELECT id, at, service, name, args, source FROM commands "
            "WHERE done_at IS NULL ORDER BY id"
        ).fetchall()
        return [Command(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def complete(self, command_id: int, result: str) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE commands SET done_at = ?, result = ? WHERE id = ?",
                (time.time(), result, command_id),
            )

    def command_result(self, command_id: int) -> str | None:
        row = self._db.execute(
            "SELECT result FROM commands WHERE id = ? AND done_at IS NOT NULL", (command_id,)
        ).fetchone()
        return str(row[0]) if row else None

    def record_change(self, record: ChangeRecord) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO changes VALUES (?, ?, ?, ?, ?, ?)", _change_row(record)
            )

    def last_change(self, service: str) -> ChangeRecord | None:
        row = self._db.execute("SELECT * FROM changes WHERE service = ?", (service,)).fetchone()
        if row is None:
            return None
        return ChangeRecord(row[0], row[1], tuple(json.loads(row[2])), row[3], bool(row[4]), row[5])

    def write(self, batch: WriteBatch) -> None:
        """Write a batch in one transaction: all of it or nothing."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO services(name, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                [(name, state_to_json(state), now) for name, state in batch.states.items()],
            )
            self._insert_journal(batch.entries)
            for record in batch.changes.values():
                self._db.execute(
                    "INSERT OR REPLACE INTO changes VALUES (?, ?, ?, ?, ?, ?)",
                    _change_row(record),
                )
            self._db.executemany(
                "UPDATE commands SET done_at = ?, result = ? WHERE id = ?",
                [(now, result, cid) for cid, result in batch.completed.items()],
            )

    def touch(self) -> None:
        """A small write, so readiness knows the store still takes writes (disk not full)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('alive', ?)", (str(time.time()),)
            )

    def prune(self, before: float, keep: int) -> int:
        """Delete journal entries older than ``before`` and beyond the newest ``keep``."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM journal WHERE at < ? OR id <= "
                "(SELECT COALESCE(MAX(id), 0) - ? FROM journal)",
                (before, keep),
            )
            self._db.execute(
                "DELETE FROM commands WHERE done_at IS NOT NULL AND done_at < ?", (before,)
            )
        return int(cursor.rowcount)

    def for_writer(self) -> SqliteStateStore:
        """A second connection to the same database, for the writer thread."""
        return SqliteStateStore(self.path)

    def names(self) -> list[str]:
        """Every service with a stored state."""
        return [r[0] for r in self._db.execute("SELECT name FROM services ORDER BY name")]

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of failing.
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _change_row(record: ChangeRecord) -> tuple[object, ...]:
    return (
        record.service,
        record.provider,
        json.dumps(record.change_ids),
        record.submitted_at,
        int(record.in_sync),
        record.confirmed_at,
    )


class StateLock:
    """One ``run`` per state file: an exclusive ``flock`` on ``<file>.lock`` holding the pid.

    The kernel drops the lock when the process dies, however it dies, so a stale lock
    file never blocks a restart.
    """

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        self.path = None if path == ":memory:" else Path(path + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``StateLocked`` naming the holder."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"state {self.path.with_suffix('')} is in use by another trafficflip run "
                f"(pid {holder}, lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StateLocked(Exception):
    """Another process holds the state file's lock."""


def state_to_json(state: ServiceState) -> str:
    return json.dumps(asdict(state), sort_keys=True)


def state_from_json(text: str) -> ServiceState:
    raw = json.loads(text)
    ramp = raw.get("ramp")
    return ServiceState(
        members=tuple(raw.get("members", ())),
        ramp=Ramp(tuple(ramp["to"]), ramp["step"], ramp["since"], _ramp_reason(ramp))
        if ramp
        else None,
        shares=raw.get("shares"),
        applied_at=raw.get("applied_at"),
        pinned=raw.get("pinned"),
        drained=tuple(raw.get("drained", ())),
        failback_approved=raw.get("failback_approved", False),
        held=raw.get("held", False),
        order=tuple(raw["order"]) if raw.get("order") else None,
        all_down=raw.get("all_down", False),
        expiries=tuple(
            Expiry(e["command"], e.get("site"), float(e["until"])) for e in raw.get("expiries", ())
        ),
        ttl=raw.get("ttl"),
        windows_begun=tuple((str(s), float(t)) for s, t in raw.get("windows_begun", ())),
    )


def _ramp_reason(ramp: Mapping[str, object]) -> RampReason:
    reason = str(ramp.get("reason", "failback"))
    # Stored before planned moves and drains had names of their own.
    return RampReason.PLANNED_MOVE if reason == "operator" else RampReason(reason)
