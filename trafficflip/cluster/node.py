"""One instance of a cluster: the election, this vantage's verdicts, the vote, the engine.

Keys under the prefix besides the store's (see ``cluster/store.py``)::

    leader                  the leader's name, bound to its lease (``election.py``)
    members/NAME            this instance's heartbeat {"at": wall time}, bound to its lease
    verdicts/NAME/CHECK     its verdict on one check {"status", "since", "reason"}, same lease

A verdict is written when this vantage's status of a check changes, and the heartbeat every
``HEARTBEAT_TTLS`` lease TTLs: etcd write load follows changes, not probes. Every instance
reads all verdicts, votes, and hands the voted health to its engine; only the leader's engine
acts on it. When an instance's lease goes, etcd deletes its heartbeat and verdicts together.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from trafficflip.backend.provider import Provider
from trafficflip.cluster.election import Election, Leadership, boottime
from trafficflip.cluster.engine import ClusterEngine
from trafficflip.cluster.etcd import REQUEST_TIMEOUT, EtcdClient, EtcdError, put_op
from trafficflip.cluster.members import ClusterCounters, MemberReader
from trafficflip.cluster.store import EtcdStateStore
from trafficflip.cluster.vote import FRESH_INTERVALS, MemberView, Verdict, Vote, tally
from trafficflip.config.loader import Config
from trafficflip.config.schema import ClusterConfig
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.model import JournalEntry, ProbeResult, ServiceState, Status
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.monitor import HealthMonitor

log = logging.getLogger("trafficflip.cluster")
HEARTBEAT_TTLS = 1.0
# How often every instance reads the others' verdicts (a range read, not a raft write).
READ_EVERY = 0.25
# etcd's default limit on operations in one transaction.
MAX_TXN_OPS = 128
START_RETRY = 1.0
# The loop is stalled (``/readyz`` says so) after this many lease TTLs without a round.
STALL_TTLS = 3.0
# How often a follower reads what the leader stored (states, new journal entries) to show it.
FOLLOW_EVERY = 1.0


def check_id(key: str) -> str:
    """A short stable id of a probe job; every instance runs the same config."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ClusterNode:
    """Runs beside the scheduler (a ``Component``): ``start`` once etcd answered."""

    def __init__(
        self,
        config: Config,
        cluster: ClusterConfig,
        *,
        clock: Clock | None = None,
        lease_clock: Callable[[], float] = boottime,
    ) -> None:
        """``clock`` paces the loop and dates verdicts (the probes' monotonic clock);
        ``lease_clock`` counts the lease (CLOCK_BOOTTIME: it runs on through a suspend)."""
        self.config = config
        self.clock = clock or Clock()
        self.cluster = cluster
        self.name = cluster.name
        self.prefix = cluster.prefix.rstrip("/")
        self.client = _client(cluster)
        # The engine's store calls come from the event loop, the election's from a thread:
        # a client each, so neither waits on the other's connection.
        self.store_client = _client(cluster)
        self.election = Election(
            self.client, self.prefix, self.name, cluster.lease_ttl, clock=lease_clock
        )
        self.store = EtcdStateStore(
            self.store_client,
            self.prefix,
            self.election.fence,
            writable=self.election.writable,
            etcd_problem=self.etcd_problem,
        )
        self.local = HealthMonitor(config.services)
        self.ids = {key: check_id(key) for key in self.local.jobs}
        intervals = [job.health.interval for job in self.local.jobs.values()]
        self.heartbeat = cluster.lease_ttl * HEARTBEAT_TTLS
        self.window = FRESH_INTERVALS * max([self.heartbeat, *intervals])
        self.engine: ClusterEngine | None = None
        self.counters = ClusterCounters()
        self.members: list[MemberView] = []
        self.isolated: set[str] = set()
        self.votes: dict[str, Vote] = {}
        self._led = False
        self._dirty: set[str] = set(self.ids)
        self._published_lease = 0
        self.reader = MemberReader(
            self.client, self.prefix, self.heartbeat, self.counters, self.clock
        )
        self._last_heartbeat = 0.0
        # Wall time of the last verdict read that succeeded: votes older than ``window``
        # count as unknown (the exchange failing while the election works).
        self._read_wall = self.clock.wall()
        # Why the loop died last (cleared by its next full round) and when it last finished one.
        self.failure: str | None = None
        self.round_at = self.clock.now()
        # A follower's copy of what the leader stored, read in ``_exchange``, shown on the loop.
        self._follow_revision = 0
        self._followed_at = -FOLLOW_EVERY
        self._follow_states: dict[str, ServiceState] = {}
        self._follow_entries: list[JournalEntry] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- wiring ------------------------------------------------------------------------------

    def build_engine(self, providers: dict[str, Provider]) -> ClusterEngine:
        """The engine for this instance: voted health in, provider writes fenced."""
        self.engine = ClusterEngine(
            self.config.services,
            self.store,
            providers,
            leading=self.leading,
            authority=self.election,
            observed=self.observe,
            refused=self._refused,
            term=self.election.term,
            clock=self.clock,
        )
        return self.engine

    async def connect(self) -> None:
        """Wait until etcd answers (logging each failure), so the engine can load state."""
        while True:
            step = await asyncio.to_thread(self.election.step)
            if step.etcd_ok:
                return
            self.counters.etcd_errors += 1
            await asyncio.sleep(START_RETRY)

    def leading(self) -> bool:
        """True while this instance leads and has taken over the stored state."""
        return self._led and self.election.is_leader(0.0)

    def etcd_problem(self) -> str | None:
        return None if self.election.etcd_ok else f"etcd unavailable: {self.election.error}"

    def not_ready_reasons(self) -> list[str]:
        """Why this instance is not ready, for ``/readyz``: its loop died or stalled, etcd
        lost, no leader known, or votes too old to count (from memory: no etcd call)."""
        reasons = []
        if self.failure is not None:
            reasons.append(f"cluster: {self.failure}")
        stalled = self.clock.now() - self.round_at
        if stalled > STALL_TTLS * self.cluster.lease_ttl:
            reasons.append(f"cluster: loop stalled, no round for {stalled:.0f}s")
        if not self.election.etcd_ok:
            return [*reasons, f"cluster: etcd unavailable (no quorum?): {self.election.error}"]
        if self.election.leader is None:
            return [*reasons, "cluster: no leader elected"]
        age = self.clock.wall() - self._read_wall
        if age > self.window:
            reasons.append(f"cluster: votes stale, no verdicts read for {age:.0f}s")
        return reasons

    # -- this vantage point ------------------------------------------------------------------

    def observe(self, key: str, result: ProbeResult) -> None:
        """Fold a probe into this vantage's verdict; publish soon if the status moved."""
        before = self.local.checks[key]
        self.local.observe(key, result)
        after = self.local.checks[key]
        if after.status is not before.status:
            self._dirty.add(key)
            self._wake.set()
        elif self.engine is not None:
            # Start-up progress (probes counted) reaches the engine without a publish.
            self.engine.set_check_health(key, self.voted_health(key))

    def _expire_silent(self) -> None:
        """This vantage's checks without results for too long (a hung probe worker) are
        published unknown, then down (``HealthMonitor.expire``)."""
        expired = self.local.expire(self.clock.now())
        if expired:
            self._dirty.update(expired)
            self._wake.set()

    def verdict(self, key: str) -> Verdict:
        check = self.local.checks[key]
        return Verdict(check.status, check.since, check.reason)

    # Verdicts travel with wall-clock ``since`` (another host's monotonic clock means nothing
    # here) and are taken back onto this host's monotonic clock when read.

    # -- the loop ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.round_at, self._read_wall = self.clock.now(), self.clock.wall()
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await asyncio.to_thread(self.election.resign)
        self.client.close()
        self.store_client.close()

    async def _supervise(self) -> None:
        """Run the loop; when it dies, say so (``/readyz`` 503 until a round succeeds) and
        start it again: a dead loop renews no lease and votes on nothing, silently."""
        while not self._stop.is_set():
            try:
                await self._run()
            except Exception as exc:
                self.counters.loop_restarts += 1
                self.failure = f"loop died ({type(exc).__name__}: {exc}), restarted"
                log.exception(
                    "cluster_loop_died name=%s: restarting in %.0fs", self.name, START_RETRY
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=START_RETRY)
                except TimeoutError:
                    pass

    async def _run(self) -> None:
        next_step = 0.0
        while not self._stop.is_set():
            if self.clock.now() >= next_step:
                next_step = self.clock.now() + self.election.period
                self._stepped(await asyncio.to_thread(self.election.step))
            if self.election.etcd_ok:
                try:
                    await asyncio.to_thread(self._exchange)
                except EtcdError as exc:
                    self.counters.etcd_errors += 1
                    log.warning("cluster_exchange_failed name=%s error=%s", self.name, exc)
                else:
                    self._read_wall = self.clock.wall()
                    self._show_followed()
            self._expire_silent()
            self._apply_votes()
            self.failure, self.round_at = None, self.clock.now()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=READ_EVERY)
            except TimeoutError:
                pass

    def _stepped(self, step: Leadership) -> None:
        if step.leading and not self._led:
            self._take_over()
        elif not step.leading and self._led:
            self._led = False
            if self.engine is not None:
                self.engine.demote()
            log.warning("follower name=%s leader=%s", self.name, step.leader)

    def _take_over(self) -> None:
        assert self.engine is not None
        try:
            self.engine.take_over()
            self.store.load_changes()
        except EtcdError as exc:
            log.error("takeover_failed name=%s error=%s", self.name, exc)
            return
        self._led = True
        self._follow_revision, self._follow_states, self._follow_entries = 0, {}, []
        self.engine.listeners.took_over()
        log.warning("leading name=%s services=%d", self.name, len(self.engine.services))
        for name in self.engine.services:
            self.engine.request(name)

    def _exchange(self) -> None:
        """Publish what changed (and the heartbeat when due); read every member's verdicts."""
        self._publish()
        self.members = self.reader.read()
        if not self._led and self.clock.now() - self._followed_at >= FOLLOW_EVERY:
            self._follow()

    def _follow(self) -> None:
        """Read what the leader stored since the last read (a follower shows it)."""
        states, entries, self._follow_revision = self.store.follow(self._follow_revision)
        self._followed_at = self.clock.now()
        self._follow_states.update(states)
        self._follow_entries += entries

    def _show_followed(self) -> None:
        """Hand the leader's states and history to this follower's engine and views: its
        API and page show what the leader decided, beside this vantage's own verdicts."""
        states, entries = self._follow_states, self._follow_entries
        if self.engine is None or self._led or not (states or entries):
            return
        self._follow_states, self._follow_entries = {}, []
        self.engine.follow(states)
        self.engine.listeners.followed(entries)

    def _publish(self) -> None:
        lease = self.election.lease
        if not lease:
            return
        if lease != self._published_lease:
            self._dirty = set(self.ids)  # a new lease: the old verdicts went with the old one
        dirty, self._dirty = self._dirty, set()
        ops = [self._verdict_op(key, lease) for key in dirty]
        now = self.clock.now()
        if ops or now - self._last_heartbeat >= self.heartbeat or lease != self._published_lease:
            ops.append(
                put_op(
                    self._key("members", self.name),
                    json.dumps({"at": self.clock.wall()}).encode(),
                    lease,
                )
            )
            self._last_heartbeat = now
        try:
            for start in range(0, len(ops), MAX_TXN_OPS):
                self.client.txn([], ops[start : start + MAX_TXN_OPS])
        except EtcdError:
            self._dirty |= dirty
            raise
        self._published_lease = lease
        self.counters.published += len(ops)

    def _verdict_op(self, key: str, lease: int) -> dict[str, Any]:
        verdict = self.verdict(key)
        since = None if verdict.since is None else self.clock.to_wall(verdict.since)
        value = {"status": verdict.status.value, "since": since, "reason": verdict.reason}
        return put_op(
            self._key("verdicts", self.name, self.ids[key]), json.dumps(value).encode(), lease
        )

    def _apply_votes(self) -> None:
        now = self.clock.wall()
        if now - self._read_wall > self.window:
            # Frozen verdicts are no evidence: every check unknown until a read succeeds.
            stale = Vote.stale(now - self._read_wall)
            votes, isolated = dict.fromkeys(self.ids.values(), stale), self.isolated
        else:
            votes, isolated = tally(
                list(self.ids.values()), self.members, self.cluster.quorum, now, self.window
            )
        if isolated != self.isolated:
            log.warning("isolated members=%s", ",".join(sorted(isolated)) or "none")
        self.votes, self.isolated = votes, isolated
        if self.engine is None:
            return
        for key in self.ids:
            self.engine.set_check_health(key, self.voted_health(key))

    def voted_health(self, key: str) -> CheckHealth:
        """The check's health for decisions: the vote's status on this vantage's counters.

        Start-up ends for a check (``settled``) when its vote is decided, or when every
        counted member has a decided verdict and the vote is still split; never on this
        vantage's probe count alone, or a leader that read no votes yet would see every
        site unknown, call it settled, and decide all_down.
        """
        local = self.local.checks[key]
        voted = self.votes.get(self.ids[key])
        if voted is None:
            return replace(local, status=Status.UNKNOWN, since=None, probes=0)
        # Stale votes end no start-up and undo none: the check is unknown, not starting.
        stale = voted.age is not None and voted.age > self.window
        decided = (
            stale
            or voted.status is not Status.UNKNOWN
            or (bool(voted.votes) and all(s is not Status.UNKNOWN for s in voted.votes.values()))
        )
        since = voted.since if voted.since is not None else local.since
        probes = local.probes if decided else 0
        return replace(local, status=voted.status, since=since, probes=probes)

    def _refused(self) -> None:
        self.counters.fencing_refusals += 1

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])


def _client(cluster: ClusterConfig) -> EtcdClient:
    auth = None
    if cluster.username is not None:
        password = cluster.password.get_secret_value() if cluster.password else ""
        auth = (cluster.username, password)
    verify: str | bool = True
    cert = None
    if cluster.tls is not None:
        verify = str(cluster.tls.ca) if cluster.tls.ca else True
        if cluster.tls.cert and cluster.tls.key:
            cert = (str(cluster.tls.cert), str(cluster.tls.key))
    # A third of the TTL: a keepalive that hangs (a member without quorum holds requests)
    # is given up in time for the next one, and a stuck call blocks the loop that long at most.
    timeout = min(REQUEST_TIMEOUT, cluster.lease_ttl / 3)
    return EtcdClient(cluster.etcd, auth=auth, verify=verify, cert=cert, timeout=timeout)


async def start_cluster(
    config: Config, cluster: ClusterConfig, providers: dict[str, Provider]
) -> tuple[ClusterNode, ClusterEngine]:
    """The node and its engine, once etcd answered (``trafficflip run`` with ``cluster``)."""
    node = ClusterNode(config, cluster)
    await node.connect()
    return node, node.build_engine(providers)


def open_command_store(cluster: ClusterConfig) -> EtcdStateStore:
    """A store for submitting operator commands from the CLI (never a leader's writes)."""
    return EtcdStateStore(_client(cluster), cluster.prefix, lambda term: None, owns_client=True)
