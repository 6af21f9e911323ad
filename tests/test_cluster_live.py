"""The cluster loop stays alive and honest (issue 22 B): entries it cannot read are skipped,
a loop that dies is restarted and says so, votes that stopped arriving expire, and the
verdict read is paged. Real etcd (one member); one ``ClusterNode`` driven directly."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.etcd import EtcdCluster
from tests.test_engine import config
from trafficflip.backend.testing import MemoryProvider
from trafficflip.cluster import api as cluster_api
from trafficflip.cluster.election import Election
from trafficflip.cluster.engine import ClusterEngine
from trafficflip.cluster.etcd import EtcdClient, EtcdError
from trafficflip.cluster.node import ClusterNode
from trafficflip.cluster.store import EtcdStateStore
from trafficflip.config.schema import ApiConfig, ClusterConfig
from trafficflip.decision.model import JournalEntry, ServiceState, Status
from trafficflip.operations.api import create_app, load_tokens
from trafficflip.operations.metrics import Metrics
from trafficflip.operations.snapshot import SnapshotKeeper
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import Runner
from trafficflip.runtime.state import ChangeRecord

PREFIX = "/tf-live"
UP, DOWN, UNKNOWN = Status.UP, Status.DOWN, Status.UNKNOWN


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1)
    yield cluster
    cluster.stop()


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    client = EtcdClient(etcd.endpoints, timeout=1.0)
    client.delete(f"{PREFIX}/", prefix=True)
    yield client
    client.close()


def make_node(etcd: EtcdCluster, name: str = "edge-a") -> ClusterNode:
    cluster = ClusterConfig(etcd=etcd.endpoints, name=name, lease_ttl=2.0, prefix=PREFIX)
    node = ClusterNode(config(), cluster)
    node.build_engine({"mem": MemoryProvider()})
    return node


def publish(node: ClusterNode, status: Status) -> None:
    """Every check of ``node`` seen with ``status`` here, published to etcd."""
    for key in node.ids:
        node.local.put(key, node.local.checks[key].__class__(status, 990.0, probes=2))
    node._dirty = set(node.ids)
    node.election.step()
    node._exchange()


def test_unreadable_members_and_verdicts_are_skipped_once_each(
    etcd: EtcdCluster, client: EtcdClient, caplog: pytest.LogCaptureFixture
) -> None:
    node, other = make_node(etcd), make_node(etcd, "edge-b")
    publish(other, UP)
    check = next(iter(node.ids.values()))
    # A newer version's status, junk where a heartbeat goes, a key of an unknown shape.
    newer = {"status": "degraded", "since": 1.0, "reason": ""}
    client.put(f"{PREFIX}/verdicts/edge-c/{check}", json.dumps(newer).encode())
    client.put(f"{PREFIX}/members/edge-c", b"{not json")
    client.put(f"{PREFIX}/members/edge-d", json.dumps({"at": "yesterday"}).encode())
    client.put(f"{PREFIX}/verdicts/edge-b", b"{}")
    caplog.set_level(logging.WARNING, "trafficflip.cluster")
    publish(node, UP)
    for _ in range(3):
        node._exchange()
        node._apply_votes()
    skipped = [r.getMessage() for r in caplog.records if "cluster_entry_skipped" in r.getMessage()]
    assert len(skipped) == 4, skipped  # one line per entry, not one per read
    assert node.counters.malformed == 4
    assert [m.name for m in node.members] == ["edge-a", "edge-b"]
    assert all(v.status is UP for v in node.votes.values())
    metrics = cluster_api.snapshot(node)
    assert metrics["malformed_entries"] == 4
    # Written again (a new revision): reported again.
    client.put(f"{PREFIX}/members/edge-c", b"[]")
    node._exchange()
    assert node.counters.malformed == 5
    other.election.resign()
    node.election.resign()


async def test_a_dead_loop_is_not_ready_and_is_restarted(
    etcd: EtcdCluster, client: EtcdClient
) -> None:
    node = make_node(etcd)
    faults = iter([RuntimeError("boom")])

    real = node._apply_votes

    def apply_votes() -> None:
        # One injected fault (no real input makes this step raise any more).
        fault = next(faults, None)
        if fault is not None:
            raise fault
        real()

    node._apply_votes = apply_votes  # type: ignore[method-assign]
    reasons: list[list[str]] = []
    await node.start()
    try:
        deadline = time.monotonic() + 10
        while node.counters.loop_restarts == 0 and time.monotonic() < deadline:
            reasons.append(node.not_ready_reasons())
            await asyncio.sleep(0.02)
        assert node.counters.loop_restarts == 1
        reasons.append(node.not_ready_reasons())
        died = [r for rs in reasons for r in rs if "loop died" in r]
        assert died and "RuntimeError: boom" in died[0], reasons
        # Restarted: the next full round clears it, and the node leads (a lone member).
        deadline = time.monotonic() + 10
        while (node.failure or not node.leading()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert node.failure is None and node.leading()
        assert node.not_ready_reasons() == []
    finally:
        await node.stop()


def test_a_stalled_loop_is_not_ready(etcd: EtcdCluster) -> None:
    node = make_node(etcd)
    node.election.etcd_ok, node.election.leader = True, "edge-a"
    node._read_wall = time.time()
    node.round_at = time.monotonic() - 3 * node.cluster.lease_ttl - 1
    assert any("loop stalled" in r for r in node.not_ready_reasons())


def test_votes_expire_when_the_verdict_read_keeps_failing(
    etcd: EtcdCluster, client: EtcdClient
) -> None:
    node, other = make_node(etcd), make_node(etcd, "edge-b")
    publish(other, UP)
    publish(node, UP)
    node._read_wall = time.time()
    node._apply_votes()
    key = next(iter(node.ids))
    assert node.voted_health(key).status is UP and node.not_ready_reasons() == []

    def failing(*args: object, **kwargs: object) -> object:
        raise EtcdError("etcd /v3/kv/range: request timed out")

    node.client.changes = failing  # type: ignore[method-assign]
    with pytest.raises(EtcdError):
        node._exchange()
    # Within the window the last votes stand; past it they count for nothing.
    node._apply_votes()
    assert node.voted_health(key).status is UP
    node._read_wall = time.time() - node.window - 1
    node._apply_votes()
    health = node.voted_health(key)
    assert health.status is UNKNOWN and health.settled(2), health
    vote = node.votes[node.ids[key]]
    assert vote.age is not None and vote.age > node.window
    assert any("votes stale" in r for r in node.not_ready_reasons())
    other.election.resign()
    node.election.resign()


def test_the_verdict_read_is_paged_at_one_revision(client: EtcdClient) -> None:
    for i in range(7):
        client.put(f"{PREFIX}/verdicts/m/{i}", b"{}")
    paged, revision = client.changes(f"{PREFIX}/verdicts/", 0, page=3)
    whole, same = client.changes(f"{PREFIX}/verdicts/", 0)
    assert [kv.key for kv in paged] == [kv.key for kv in whole] and len(paged) == 7
    assert revision == same
    client.put(f"{PREFIX}/verdicts/m/3", b"{}")
    changed, _ = client.changes(f"{PREFIX}/verdicts/", revision, page=3)
    assert [kv.key for kv in changed] == [f"{PREFIX}/verdicts/m/3"]


def test_command_ids_are_unique_and_ordered_whatever_the_clocks(
    client: EtcdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = [EtcdStateStore(client, PREFIX, lambda: None) for _ in range(4)]
    # Every submitting host's clock reads the same microsecond, and then goes back.
    monkeypatch.setattr(time, "time_ns", lambda: 5_000_000_000)
    with ThreadPoolExecutor(4) as pool:
        ids = list(
            pool.map(
                lambda i: stores[i % 4].submit("www", "hold", {"n": i}, "cli"),
                range(40),
            )
        )
    assert len(set(ids)) == 40
    pending = stores[0].pending()
    assert [c.id for c in pending] == sorted(ids)
    assert sorted(c.args["n"] for c in pending) == list(range(40))  # none overwritten


def test_a_command_result_is_read_once_and_leased(client: EtcdClient) -> None:
    election = Election(client, PREFIX, "a", 2)
    election.step()
    leader = EtcdStateStore(client, PREFIX, election.fence)
    command_id = EtcdStateStore(client, PREFIX, lambda: None).submit("www", "hold", {}, "cli")
    leader.complete(command_id, "ok")
    kv = client.get(f"{PREFIX}/results/{command_id:020d}")
    assert kv is not None and kv.lease != 0 and leader.pending() == []
    assert leader.command_result(command_id) == "ok"
    assert leader.command_result(command_id) is None
    election.resign()


def test_a_follower_shows_what_the_leader_stored(etcd: EtcdCluster, client: EtcdClient) -> None:
    election = Election(client, PREFIX, "edge-b", 2)
    election.step()
    leader = EtcdStateStore(client, PREFIX, election.fence)
    node = make_node(etcd)
    assert node.engine is not None
    keeper = SnapshotKeeper(node.engine)
    keeper.seed()
    node.election.step()
    node._exchange()  # the first read: every stored state (none yet), no history
    failed_over = ServiceState(members=("dr",), shares={"primary": 0, "dr": 100})
    entry = JournalEntry(time.time(), "www", "failover", "failover www: primary down -> dr", {})
    leader.save("www", failed_over, [entry])
    node._followed_at = -1.0  # due now (FOLLOW_EVERY)
    node._exchange()
    node._show_followed()
    assert node.engine.states["www"].members == ("dr",)
    view = keeper.build_now()
    assert view.summary.last_failover == entry.at
    assert view.view("www", 10).phase == "failed over"  # type: ignore[union-attr]
    # Read again from the same revision: nothing shown twice.
    node._followed_at = -1.0
    node._exchange()
    node._show_followed()
    journal = keeper.build_now().view("www", 10).journal  # type: ignore[union-attr]
    assert [e.kind for e in journal].count("failover") == 1
    election.resign()
    node.election.resign()


class _Leading:
    """The authority of an instance that may act exactly while ``leading[0]``."""

    def __init__(self, leading: list[bool]) -> None:
        self.leading = leading

    def may_act(self, timeout: float) -> bool:
        return self.leading[0]

    def call_limit(self) -> float:
        return float("inf")


async def test_a_command_etcd_cannot_take_answers_503_never_500(client: EtcdClient) -> None:
    from tests.test_operator_api import AUTH, TOKEN

    # As while the election's last step found etcd away, or a request timed out under load.
    problem: list[str | None] = [None]
    store = EtcdStateStore(client, PREFIX, lambda: None, etcd_problem=lambda: problem[0])
    leading = [False]
    engine = ClusterEngine(
        config().services,
        store,
        {"mem": MemoryProvider()},
        leading=lambda: leading[0],
        authority=_Leading(leading),
        observed=lambda key, result: None,
        refused=lambda: None,
    )
    api_config = ApiConfig.model_validate({"tokens": {"ops": TOKEN}})
    runner = Runner(engine, Prober(), reconcile_interval=30)
    app = create_app(engine, runner, Metrics(engine, runner), load_tokens(api_config), api_config)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
    problem[0] = "etcd unavailable: no etcd member answered /v3/kv/txn: timed out"
    try:
        # A follower: the command would be queued in etcd, which does not take it.
        response = await api.post("/api/v1/services/www/hold", json={}, headers=AUTH)
        assert response.status_code == 503, response.text
        assert "hold not confirmed: etcd unavailable" in response.json()["detail"]
        assert not engine.states["www"].held
        # The leader takes it; its view cannot read the last change from etcd: still 200.
        leading[0] = True
        response = await api.post("/api/v1/services/www/hold", json={}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert engine.states["www"].held
    finally:
        await api.aclose()
        problem[0] = None
        await engine.close()


def test_last_changes_are_answered_from_memory_once_read_whole(
    client: EtcdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    election = Election(client, PREFIX, "a", 2)
    election.step()
    leader = EtcdStateStore(client, PREFIX, election.fence)
    first = ChangeRecord("www", "aws", ("C1",), 2.0, False, None)
    leader.record_change(first)
    other = EtcdClient(client.endpoints, timeout=1.0)
    follower = EtcdStateStore(other, PREFIX, lambda: None)
    _, _, revision = follower.follow(0)
    leader.load_changes()
    second = ChangeRecord("api", "aws", ("C2",), 3.0, True, 3.5)
    leader.record_change(second)
    _, _, revision = follower.follow(revision)

    def no_etcd(*args: object, **kwargs: object) -> object:
        raise AssertionError("an etcd call where memory should answer")

    monkeypatch.setattr(client, "call", no_etcd)
    monkeypatch.setattr(other, "call", no_etcd)
    for store in (leader, follower):
        assert store.last_change("www") == first and store.last_change("api") == second
        assert store.last_change("nope") is None
    monkeypatch.undo()
    election.resign()
    other.close()
