"""``EtcdStateStore``: the ``StateStore`` contract on etcd, with fenced writes.

Keys under the cluster's prefix::

    services/NAME     the service's ServiceState (JSON, wall-clock times)
    changes/NAME      the last provider change (ChangeRecord)
    command_seq       the last command id given out (ids come from etcd, never a clock)
    commands/ID       an operator command waiting for the leader (any instance may submit)
    results/ID        what the leader answered to a command: deleted once read, and bound
                      to a lease of RESULT_TTL so an answer nobody waits for goes too
    journal/ID        one journal entry; the oldest are trimmed past JOURNAL_KEEP

Writes that decide traffic (``save``, ``complete``, ``record_change``) are transactions
guarded by the election's fence for the term they were made in (a writer batch's ``term``):
a write of a term that ended is refused, here or by etcd, journaled as ``fencing_refused``
(an unguarded append: a record of the refusal, not state), counted, and raised as
``NotLeaderError``, which the writer drops, never replays. While the lease is not confirmed
(``writable`` false: no keepalive answered recently) a write waits, as when etcd is down.
Journal lines of a refused batch are still written: they are history, not a claim to lead.
Appending to the journal and submitting commands need no
leadership. While the election's last step could not reach etcd, every call fails at once
with ``EtcdUnavailable`` instead of stalling the event loop on timeouts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from trafficflip.cluster.etcd import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    delete_op,
    put_op,
)
from trafficflip.decision.model import JournalEntry, ServiceState
from trafficflip.errors import NotLeaderError
from trafficflip.runtime.state import (
    ChangeRecord,
    Command,
    WriteBatch,
    state_from_json,
    state_to_json,
)

log = logging.getLogger("trafficflip.cluster")
JOURNAL_KEEP = 10000
# etcd's default --max-txn-ops is 128: journal lines go in transactions of at most this many.
TXN_OPS = 100
# Trim the journal once per this many appends (a count is a range request, not free).
TRIM_EVERY = 100
# How long the leader's answer to a command is kept for the CLI that waits for it.
RESULT_TTL = 3600
# Submissions racing for the next command id: each loser reads the new last id and retries.
SUBMIT_ATTEMPTS = 20
# Keys per range request when a follower reads what the leader stored.
FOLLOW_PAGE = 1000


class EtcdStateStore:
    """Shared state for every instance of a cluster; only the leader's writes land."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        fence: Callable[[int | None], Compare | None],
        *,
        writable: Callable[[], bool] = lambda: True,
        etcd_problem: Callable[[], str | None] = lambda: None,
        journal_keep: int = JOURNAL_KEEP,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self._fence = fence
        self._writable = writable
        self._problem = etcd_problem
        self.journal_keep = journal_keep
        self._owns_client = owns_client
        self.refusals = 0
        self._appends = 0
        self._seq = 0
        # Each service's last provider change once read whole (``load_changes``, ``follow``):
        # then ``last_change`` answers from memory, never with an etcd call on the event loop
        # (every snapshot rebuild and change confirmation asks, for every service).
        self._changes: dict[str, ChangeRecord] | None = None

    def _key(self, *parts: object) -> str:
        return "/".join([self.prefix, *(str(p) for p in parts)])

    # -- fenced writes -----------------------------------------------------------------------

    def save(
        self,
        service: str,
        state: ServiceState,
        entries: Sequence[JournalEntry],
        term: int | None = None,
    ) -> None:
        ops = [put_op(self._key("services", service), state_to_json(state).encode())]
        ops += [self._journal_op(e) for e in entries]
        self._fenced(f"save service={service}", ops, service, term)
        self._appends += len(entries)
        self._trim()

    def complete(self, command_id: int, result: str, term: int | None = None) -> None:
        # A lease of its own: the leader's would take the answer along at a leader change.
        lease = self.client.grant(RESULT_TTL)
        ops = [
            delete_op(self._key("commands", _id(command_id))),
            put_op(self._key("results", _id(command_id)), result.encode(), lease),
        ]
        self._fenced(f"complete command={command_id}", ops, "", term)

    def record_change(self, record: ChangeRecord, term: int | None = None) -> None:
        value = json.dumps(asdict(record)).encode()
        self._fenced(
            f"record_change service={record.service}",
            [put_op(self._key("changes", record.service), value)],
            record.service,
            term,
        )
        if self._changes is not None:
            self._changes[record.service] = record

    def _fenced(self, what: str, ops: list[dict[str, Any]], service: str, term: int | None) -> None:
        """``ops`` in one transaction, only in ``term`` (None: the term held now)."""
        self._check_etcd()
        fence = self._fence(term)
        if fence is not None and not self._writable():
            raise EtcdUnavailable(f"{what}: the lease is not confirmed by a recent etcd keepalive")
        if fence is None or not self.client.txn([fence], ops).succeeded:
            self.refusals += 1
            log.error("fencing_refused %s: not the leader (lease lost or deposed)", what)
            refusal = JournalEntry(
                time.time(), service, "fencing_refused", f"{what}: not the leader", {}
            )
            try:
                self.append([refusal])
            except EtcdUnavailable:
                pass  # logged and counted above; etcd will not take the record either
            raise NotLeaderError(f"{what} refused: this instance is not the leader")

    # -- the StateWriter's contract ---------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        """A writer batch: each state fenced on its own in the batch's term, then journal
        lines, changes and command results (etcd limits the operations of one transaction).
        The journal lines are written even when the states are refused (see above)."""
        refused: NotLeaderError | None = None
        try:
            for service, state in batch.states.items():
                self.save(service, state, [], batch.term)
        except NotLeaderError as exc:
            refused = exc
        for start in range(0, len(batch.entries), TXN_OPS):
            self.append(batch.entries[start : start + TXN_OPS])
        if refused is not None:
            raise refused
        for record in batch.changes.values():
            self.record_change(record, batch.term)
        for command_id, result in batch.completed.items():
            self.complete(command_id, result, batch.term)

    def touch(self) -> None:
        """Readiness: etcd answers (the election's last step reached it)."""
        self._check_etcd()

    def prune(self, before: float, keep: int) -> int:
        """The journal is trimmed by count as it is appended to (``journal_keep``)."""
        return 0

    def for_writer(self) -> EtcdStateStore:
        """The writer thread shares this store: one httpx client, which is thread-safe."""
        return self

    # -- unfenced ------------------------------------------------------------------------------

    def append(self, entries: Sequence[JournalEntry]) -> None:
        self._check_etcd()
        if entries:
            self.client.txn([], [self._journal_op(e) for e in entries])
            self._appends += len(entries)
            self._trim()

    def submit(self, service: str, name: str, args: dict[str, Any], source: str) -> int:
        """Queue a command for the leader under the next id from ``command_seq``.

        One transaction takes the id and creates the command, only if nobody took that id
        first and no command holds it: two submissions never share an id, and ids follow
        submission order whatever the clocks of the submitting hosts say."""
        self._check_etcd()
        body = {"at": time.time(), "service": service, "name": name, "args": args, "source": source}
        value = json.dumps(body).encode()
        seq = self._key("command_seq")
        for _ in range(SUBMIT_ATTEMPTS):
            last = self.client.get(seq)
            # The first id continues past the clock-based ids earlier versions gave out.
            command_id = int(last.value) + 1 if last else time.time_ns() // 1000
            key = self._key("commands", _id(command_id))
            taken = Compare(seq, "MOD", last.mod_revision) if last else Compare(seq, "CREATE", 0)
            ops = [put_op(seq, str(command_id).encode()), put_op(key, value)]
            if self.client.txn([taken, Compare(key, "CREATE", 0)], ops).succeeded:
                return command_id
        raise EtcdError(f"command not queued: {SUBMIT_ATTEMPTS} other submissions came first")

    # -- reads -------------------------------------------------------------------------------

    def load(self, service: str) -> ServiceState | None:
        self._check_etcd()
        kv = self.client.get(self._key("services", service))
        return state_from_json(kv.value.decode()) if kv else None

    def journal(self, service: str | None = None, limit: int = 50) -> list[JournalEntry]:
        self._check_etcd()
        kvs = self.client.range(
            self._key("journal", ""), prefix=True, descending=True, limit=0 if service else limit
        )
        entries = []
        for kv in kvs:
            entry = _entry(kv.value)
            if service is None or entry.service == service:
                entries.append(entry)
            if len(entries) >= limit:
                break
        return list(reversed(entries))

    def follow(self, revision: int) -> tuple[dict[str, ServiceState], list[JournalEntry], int]:
        """What the leader stored after ``revision``: changed states and new journal
        entries, and the revision to pass next time. With 0: every state and no entries
        (the history is read on its own at start). For a follower's view; read-only."""
        self._check_etcd()
        entries: list[JournalEntry] = []
        journal_revision = 0
        if revision:
            # The journal first: states read after it may be newer (read again next time,
            # harmless); entries never are, so none is shown twice.
            kvs, journal_revision = self.client.changes(
                self._key("journal", ""), revision, page=FOLLOW_PAGE
            )
            entries = [e for kv in kvs if (e := _readable(kv.value)) is not None]
        self._read_changes(revision)
        services = self._key("services", "")
        kvs, states_revision = self.client.changes(services, revision, page=FOLLOW_PAGE)
        states = {}
        for kv in kvs:
            try:
                states[kv.key[len(services) :]] = state_from_json(kv.value.decode())
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("state_skipped key=%s error=%s", kv.key, exc)
        return states, entries, journal_revision or states_revision

    def pending(self) -> list[Command]:
        self._check_etcd()
        commands = []
        for kv in self.client.range(self._key("commands", ""), prefix=True):
            raw = json.loads(kv.value)
            command_id = int(kv.key.rsplit("/", 1)[1])
            commands.append(
                Command(
                    command_id, raw["at"], raw["service"], raw["name"], raw["args"], raw["source"]
                )
            )
        return commands

    def command_result(self, command_id: int) -> str | None:
        """The leader's answer, once: it is deleted as it is read."""
        key = self._key("results", _id(command_id))
        kv = self.client.get(key)
        if kv is None:
            return None
        self.client.delete(key)
        return kv.value.decode()

    def last_change(self, service: str) -> ChangeRecord | None:
        if self._changes is not None:
            return self._changes.get(service)
        self._check_etcd()
        kv = self.client.get(self._key("changes", service))
        return None if kv is None else _change(kv.value)

    def load_changes(self) -> None:
        """Read every service's last change at once (a new leader, before acting)."""
        self._check_etcd()
        self._read_changes(0)

    def _read_changes(self, revision: int) -> None:
        """Every change record written after ``revision`` (all with 0) into memory."""
        if revision and self._changes is None:
            return  # never read whole: the newer records alone would hide the older ones
        prefix = self._key("changes", "")
        kvs, _ = self.client.changes(prefix, revision, page=FOLLOW_PAGE)
        # Updated in place after the first read: the writer thread may add its own meanwhile.
        changes = self._changes if revision and self._changes is not None else {}
        for kv in kvs:
            try:
                changes[kv.key[len(prefix) :]] = _change(kv.value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("change_skipped key=%s error=%s", kv.key, exc)
        self._changes = changes

    def close(self) -> None:
        """Close the client if this store owns it (the node closes its own)."""
        if self._owns_client:
            self.client.close()

    # -- helpers -----------------------------------------------------------------------------

    def _check_etcd(self) -> None:
        problem = self._problem()
        if problem:
            raise EtcdUnavailable(problem)

    def _journal_op(self, entry: JournalEntry) -> dict[str, Any]:
        # Microseconds since the epoch, zero-padded: keys sort by time; the suffix keeps two
        # entries of one microsecond apart.
        self._seq += 1
        key = self._key("journal", f"{time.time_ns() // 1000:020d}-{self._seq % 1000:03d}")
        return put_op(key, json.dumps(asdict(entry)).encode())

    def _trim(self) -> None:
        if self._appends < TRIM_EVERY:
            return
        self._appends = 0
        prefix = self._key("journal", "")
        excess = self.client.count(prefix) - self.journal_keep
        if excess <= 0:
            return
        oldest = self.client.range(prefix, prefix=True, limit=excess, keys_only=True)
        if oldest:
            self.client.delete(oldest[0].key, end=oldest[-1].key + "\0")


def _id(command_id: int) -> str:
    return f"{command_id:020d}"


def _change(value: bytes) -> ChangeRecord:
    raw = json.loads(value)
    return ChangeRecord(
        raw["service"],
        raw["provider"],
        tuple(raw["change_ids"]),
        raw["submitted_at"],
        raw["in_sync"],
        raw["confirmed_at"],
    )


def _entry(value: bytes) -> JournalEntry:
    raw = json.loads(value)
    return JournalEntry(raw["at"], raw["service"], raw["kind"], raw["message"], raw["data"])


def _readable(value: bytes) -> JournalEntry | None:
    """A journal entry, or None (logged) when this version cannot read it."""
    try:
        return _entry(value)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("journal_entry_skipped error=%s", exc)
        return None
