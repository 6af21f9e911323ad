"""The one owner of persistence: decided state, journal lines, change records, command results.

Writes go to a queue and are written by a thread of their own, one transaction per batch, so
the event loop never waits on a disk, a lock or a full file system. While the store fails,
everything stays queued in memory (states coalesced per service: only the newest matters)
and is written once it works again. A traffic change never waits for its record.

In cluster mode (``bind_term``) what claims to lead (states, change records, command
results) is bound to the leader's term it was made in: queued work of a term that ended is
dropped, never replayed in a later one, even one of this same instance. Journal lines are
history, not a claim: they are always kept and written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trafficflip.config.schema import JournalConfig
from trafficflip.decision.model import JournalEntry, ServiceState
from trafficflip.errors import NotLeaderError
from trafficflip.runtime.retry import backoff_delay
from trafficflip.runtime.state import ChangeRecord, StateStore, WriteBatch

log = logging.getLogger("trafficflip.store")
# A small write when idle, so readiness notices a store that stopped taking writes.
TOUCH_EVERY = 5.0
PRUNE_EVERY = 3600.0
RETRY_CAP = 5.0
# Journal lines kept in memory while the store is down; beyond this the oldest are dropped
# (counted), never a state: states are one per service.
MAX_QUEUED_ENTRIES = 100_000


@dataclass
class StoreHealth:
    """What readiness and metrics say about the store."""

    ok: bool = True
    error: str = ""
    failures: int = 0
    dropped_entries: int = 0
    queued: int = 0
    last_ok: float | None = None


@dataclass
class _Queue:
    states: dict[str, ServiceState] = field(default_factory=dict)
    entries: list[JournalEntry] = field(default_factory=list)
    changes: dict[str, ChangeRecord] = field(default_factory=dict)
    completed: dict[int, str] = field(default_factory=dict)
    # The term the states, changes and results were made in (see the module docstring).
    term: int = 0

    def take(self) -> WriteBatch:
        batch = WriteBatch(self.states, self.entries, self.changes, self.completed, self.term)
        self.states, self.entries, self.changes, self.completed = {}, [], {}, {}
        return batch

    def enter(self, term: int) -> int:
        """Queue work of ``term`` from now on; the number of queued claims of an older term
        dropped (their term ended when another began)."""
        if term == self.term:
            return 0
        dropped = len(self.states) + len(self.changes) + len(self.completed)
        self.states, self.changes, self.completed = {}, {}, {}
        self.term = term
        return dropped

    def put_back(self, batch: WriteBatch) -> int:
        """A failed batch goes back behind nothing newer: newer states and records win.
        Its claims are dropped if a newer term began meanwhile (the count dropped)."""
        self.entries = batch.entries + self.entries
        if batch.term != self.term:
            return len(batch.states) + len(batch.changes) + len(batch.completed)
        self.states = {**batch.states, **self.states}
        self.changes = {**batch.changes, **self.changes}
        self.completed = {**batch.completed, **self.completed}
        return 0

    def __len__(self) -> int:
        return len(self.states) + len(self.entries) + len(self.changes) + len(self.completed)


class StateWriter:
    """Queues writes and writes them on its own thread; see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        *,
        retention: JournalConfig | None = None,
        touch_every: float = TOUCH_EVERY,
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self._store = store
        self._retention = retention or JournalConfig()
        self._touch_every = touch_every
        self._on_failure = on_failure
        self._queue = _Queue()
        self._term: Callable[[], int] = lambda: 0
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self.health = StoreHealth()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def bind_term(self, term: Callable[[], int]) -> None:
        """Cluster mode: ``term()`` is the leader's term now (0 when not leading); every
        state, change record and command result is bound to the term it is queued in."""
        self._term = term

    # -- what the service queues ---------------------------------------------------------

    def save(self, service: str, state: ServiceState, entries: Sequence[JournalEntry]) -> None:
        with self._cond:
            self._enter_term()
            self._queue.states[service] = state
            self._add_entries(entries)
            self._cond.notify()

    def append(self, entries: Sequence[JournalEntry]) -> None:
        with self._cond:
            self._add_entries(entries)
            self._cond.notify()

    def record_change(self, record: ChangeRecord) -> None:
        with self._cond:
            self._enter_term()
            self._queue.changes[record.service] = record
            self._cond.notify()

    def complete(self, command_id: int, result: str) -> None:
        with self._cond:
            self._enter_term()
            self._queue.completed[command_id] = result
            self._cond.notify()

    def _enter_term(self) -> None:
        term = self._term()
        dropped = self._queue.enter(term)
        if dropped:
            log.error("store_write_dropped reason='term ended' items=%d new_term=%d", dropped, term)

    def _add_entries(self, entries: Sequence[JournalEntry]) -> None:
        self._queue.entries.extend(entries)
        excess = len(self._queue.entries) - MAX_QUEUED_ENTRIES
        if excess > 0:
            del self._queue.entries[:excess]
            self.health.dropped_entries += excess

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        db = self._store.for_writer()
        last_prune = 0.0
        failures = 0
        while True:
            with self._cond:
                if not len(self._queue) and not self._stopping:
                    self._cond.wait(self._touch_every)
                if self._stopping and not len(self._queue):
                    break
                batch = self._queue.take()
                self._busy = True
            try:
                db.write(batch) if batch else db.touch()
                if time.monotonic() - last_prune >= PRUNE_EVERY:
                    last_prune = time.monotonic()
                    self._prune(db)
            except NotLeaderError as exc:
                # A deposed leader's writes must never land later: dropped, not retried.
                log.error("store_write_dropped reason=%s services=%d", exc, len(batch.states))
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                continue
            except Exception as exc:  # any store failure: keep everything, say so, retry
                failures += 1
                with self._cond:
                    dropped = self._queue.put_back(batch)
                    self._busy = False
                    stopping = self._stopping
                if dropped:
                    log.error(
                        "store_write_dropped reason='term %d ended' items=%d", batch.term, dropped
                    )
                self._failed(exc)
                if stopping and failures >= 3:
                    break  # shutting down: what is left is logged as lost below
                time.sleep(backoff_delay(failures, base=0.2, cap=RETRY_CAP) + 0.05)
                continue
            failures = 0
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            self._recovered()
        lost = len(self._queue)
        if lost:
            log.error("store_lost items=%d: the store did not take them before shutdown", lost)
        db.close()

    def _prune(self, db: StateStore) -> None:
        removed = db.prune(time.time() - self._retention.max_age, self._retention.max_entries)
        if removed:
            log.info("journal_pruned entries=%d", removed)

    def _failed(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.health.failures += 1
        self.health.queued = len(self._queue)
        if self.health.ok or error != self.health.error:
            log.error(
                "store_error error=%r queued=%d (kept in memory, retrying)",
                error,
                self.health.queued,
            )
        self.health.ok, self.health.error = False, error
        if self._on_failure is not None:
            self._on_failure(exc)

    def _recovered(self) -> None:
        if not self.health.ok:
            log.warning("store_recovered: queued writes are stored")
        self.health.ok, self.health.error = True, ""
        self.health.queued = len(self._queue)
        self.health.last_ok = time.time()

    # -- shutdown and tests -------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is written; False if the store did not take it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while len(self._queue) or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
