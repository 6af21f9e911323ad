"""``EtcdStateStore`` on a real 3-member etcd: the StateStore contract, fenced writes,
commands from any instance, journal retention, and failing fast while etcd is away."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcd import EtcdCluster
from trafficflip.cluster.election import Election
from trafficflip.cluster.etcd import EtcdClient, EtcdUnavailable
from trafficflip.cluster.store import TRIM_EVERY, EtcdStateStore
from trafficflip.decision.model import JournalEntry, Ramp, ServiceState
from trafficflip.errors import NotLeaderError
from trafficflip.runtime.state import ChangeRecord

PREFIX = "/tf-store"
STATE = ServiceState(
    members=("dr",),
    ramp=Ramp(("primary",), 1, 123.0, "failback"),
    shares={"primary": 25, "dr": 75},
    applied_at=124.0,
    drained=("x",),
    failback_approved=True,
    held=True,
    order=("dr", "primary"),
)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    client = EtcdClient(etcd.endpoints, timeout=1.0)
    client.delete(f"{PREFIX}/", prefix=True)
    yield client
    client.close()


def leader_store(client: EtcdClient, name: str = "a") -> tuple[Election, EtcdStateStore]:
    election = Election(client, PREFIX, name, 2)
    election.step()
    return election, EtcdStateStore(client, PREFIX, election.fence)


def test_the_state_store_contract(client: EtcdClient) -> None:
    election, store = leader_store(client)
    assert election.is_leader()
    entry = JournalEntry(1.0, "www", "failover", "primary down", {"a": 1})
    store.save("www", STATE, [entry])
    store.record_change(ChangeRecord("www", "aws", ("C1",), 2.0, False, None))
    store.append([JournalEntry(3.0, "api", "note", "other service", {})])
    assert store.load("www") == STATE and store.load("other") is None
    assert [(e.kind, e.data) for e in store.journal("www")] == [("failover", {"a": 1})]
    assert [e.service for e in store.journal()] == ["www", "api"]
    assert [e.service for e in store.journal(limit=1)] == ["api"]
    assert store.last_change("www") == ChangeRecord("www", "aws", ("C1",), 2.0, False, None)


def test_commands_from_any_instance_are_taken_by_the_leader(client: EtcdClient) -> None:
    _, leader = leader_store(client, "a")
    follower_election = Election(client, PREFIX, "b", 2)
    follower_election.step()
    follower = EtcdStateStore(client, PREFIX, follower_election.fence)
    command_id = follower.submit("www", "failover", {"to": "dr"}, "cli")
    [pending] = leader.pending()
    assert (pending.id, pending.name, pending.args) == (command_id, "failover", {"to": "dr"})
    assert follower.command_result(command_id) is None
    with pytest.raises(NotLeaderError):
        follower.complete(command_id, "ok")
    leader.complete(command_id, "ok")
    assert leader.pending() == [] and follower.command_result(command_id) == "ok"


def test_a_deposed_leaders_write_is_refused_and_journaled(client: EtcdClient) -> None:
    old, old_store = leader_store(client, "a")
    old_store.save("www", STATE, [])
    client.revoke(old.lease)  # a's lease ran out while it was paused
    new, new_store = leader_store(client, "b")
    assert new.is_leader()
    # a still believes it leads (its local clock has not caught up): etcd refuses anyway.
    old.revision = old.revision or 1
    old.deadline = old.clock() + 100
    with pytest.raises(NotLeaderError):
        old_store.save("www", ServiceState(shares={"primary": 100, "dr": 0}), [])
    assert new_store.load("www") == STATE
    assert old_store.refusals == 1
    assert [e.kind for e in new_store.journal("www")] == ["fencing_refused"]


def test_the_journal_keeps_the_newest_entries(client: EtcdClient) -> None:
    _, store = leader_store(client)
    store.journal_keep = 30
    for n in range(TRIM_EVERY):
        store.append([JournalEntry(float(n), "www", "note", f"n{n}", {})])
    kept = store.journal("www", limit=1000)
    assert len(kept) == 30 and kept[-1].message == f"n{TRIM_EVERY - 1}"


def test_calls_fail_at_once_while_etcd_is_away(client: EtcdClient) -> None:
    store = EtcdStateStore(client, PREFIX, lambda: None, etcd_problem=lambda: "no quorum")
    with pytest.raises(EtcdUnavailable, match="no quorum"):
        store.journal(limit=1)
    with pytest.raises(EtcdUnavailable):
        store.submit("www", "failover", {}, "cli")
