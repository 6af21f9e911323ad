"""The etcd client and the election against a real 3-member etcd: leadership, fencing,
member loss and quorum loss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd import EtcdCluster
from tests.support import wait_until
from trafficflip.cluster.election import Election
from trafficflip.cluster.etcd import Compare, EtcdClient, EtcdUnavailable, put_op

TTL = 2
PREFIX = "/tf-test"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd")
    yield cluster
    cluster.stop()


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    client = EtcdClient(etcd.endpoints, timeout=1.0)
    yield client
    client.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_put_range_txn_and_leases(client: EtcdClient) -> None:
    first = client.put(f"{PREFIX}/a", b"1")
    client.put(f"{PREFIX}/b", b"2")
    kv = client.get(f"{PREFIX}/a")
    assert kv is not None and kv.value == b"1" and kv.create_revision == first
    assert [k.key for k in client.range(f"{PREFIX}/", prefix=True)] == [
        f"{PREFIX}/a",
        f"{PREFIX}/b",
    ]
    assert client.count(f"{PREFIX}/") == 2
    refused = client.txn(
        [Compare(f"{PREFIX}/a", "CREATE", first + 1)], [put_op(f"{PREFIX}/a", b"x")]
    )
    assert not refused.succeeded and client.get(f"{PREFIX}/a").value == b"1"  # type: ignore[union-attr]
    lease = client.grant(TTL)
    client.put(f"{PREFIX}/leased", b"v", lease=lease)
    assert client.keepalive(lease) == TTL
    client.revoke(lease)
    assert client.get(f"{PREFIX}/leased") is None
    assert client.keepalive(lease) == 0
    assert client.delete(f"{PREFIX}/", prefix=True) == 2


def test_one_leader_and_a_deposed_leaders_write_is_refused(client: EtcdClient) -> None:
    clock = FakeClock()
    a = Election(client, PREFIX, "a", TTL, clock=clock)
    b = Election(client, PREFIX, "b", TTL, clock=clock)
    assert a.step().leading and not b.step().leading
    assert b.leader == "a" and a.is_leader()
    fence_a = a.fence()
    assert fence_a is not None
    # a pauses past its lease: etcd expires the key, b takes over.
    client.revoke(a.lease)
    assert b.step().leading
    stale = client.txn([fence_a], [put_op(f"{PREFIX}/state", b"from a")])
    assert not stale.succeeded, "a deposed leader's write must be refused by etcd"
    fence_b = b.fence()
    assert fence_b is not None
    assert client.txn([fence_b], [put_op(f"{PREFIX}/state", b"from b")]).succeeded
    a.step()
    assert not a.is_leader() and a.leader == "b"


def test_is_leader_runs_out_with_the_lease_on_the_local_clock(client: EtcdClient) -> None:
    clock = FakeClock()
    leader = Election(client, PREFIX, "a", TTL, clock=clock)
    assert leader.step().leading
    clock.now += TTL - leader.default_margin + 0.01
    assert not leader.is_leader(), "no provider call with less than the margin left"
    assert leader.is_leader(0.0)
    clock.now += leader.default_margin
    assert not leader.is_leader(0.0) and not leader.writable()
    assert not leader.may_act(0.0)


def test_a_call_is_started_only_if_the_lease_outlasts_it(client: EtcdClient) -> None:
    """Virtual time: ``may_act`` compares the lease left with the call's own timeout."""
    clock = FakeClock()
    leader = Election(client, PREFIX, "a", TTL, clock=clock)
    assert leader.step().leading
    margin = leader.default_margin
    assert leader.may_act(leader.call_limit())
    assert not leader.may_act(TTL - margin), "a call as long as the lease is never started"
    clock.now += 0.5
    assert leader.may_act(TTL - margin - 0.6)
    assert not leader.may_act(TTL - margin - 0.4), "this call could outlive the lease"
    # The longest call allowed can start at any moment until a keepalive is due.
    clock.now = 1000.0 + leader.period
    assert leader.may_act(leader.call_limit())


def test_no_write_without_a_recent_keepalive_answer(client: EtcdClient) -> None:
    """A keepalive that is late (here: never sent) stops writes before the deadline does."""
    clock = FakeClock()
    leader = Election(client, PREFIX, "a", 60, clock=clock)
    assert leader.step().leading
    clock.now += leader.fresh_for + 0.01
    assert leader.is_leader(0.0), "the deadline alone still allows"
    assert not leader.writable() and not leader.may_act(0.0)
    leader.step()  # a keepalive answered
    assert leader.writable() and leader.may_act(0.0)


def test_the_lease_is_counted_on_boottime() -> None:
    import time

    from trafficflip.cluster.election import boottime

    # BOOTTIME includes suspended time: never behind the monotonic clock.
    assert boottime() >= time.monotonic() - 0.01
    assert Election.__init__.__kwdefaults__["clock"] is boottime


def test_a_term_that_ended_is_fenced_even_if_the_same_instance_leads_again(
    client: EtcdClient,
) -> None:
    leader = Election(client, PREFIX, "a", TTL)
    assert leader.step().leading
    old = leader.term()
    leader.resign()
    assert leader.step().leading
    assert leader.term() != old
    assert leader.fence(old) is None
    new_fence = leader.fence(leader.term())
    assert new_fence is not None
    assert client.txn([new_fence], [put_op(f"{PREFIX}/state", b"x")]).succeeded
    stale = Compare(f"{PREFIX}/leader", "CREATE", old)
    assert not client.txn([stale], [put_op(f"{PREFIX}/state", b"y")]).succeeded


def test_one_member_down_changes_nothing(etcd: EtcdCluster, client: EtcdClient) -> None:
    leader = Election(client, PREFIX, "a", TTL)
    assert leader.step().leading
    etcd.kill(0)  # the member the client talks to first
    for _ in range(3):
        assert leader.step().leading and leader.etcd_ok
    fence = leader.fence()
    assert fence is not None
    assert client.txn([fence], [put_op(f"{PREFIX}/state", b"x")]).succeeded


def test_quorum_loss_ends_leadership_and_it_comes_back(etcd: EtcdCluster) -> None:
    client = EtcdClient(etcd.endpoints, timeout=0.5)
    leader = Election(client, PREFIX, "a", TTL)
    assert leader.step().leading
    etcd.kill(1)
    etcd.kill(2)
    step = leader.step()
    assert not step.etcd_ok and "etcd" in step.error
    with pytest.raises(EtcdUnavailable):
        client.put(f"{PREFIX}/x", b"1")
    wait_until(lambda: not leader.is_leader(), timeout=TTL + 1, what="the lease deadline to pass")
    etcd.restart(1)
    etcd.restart(2)
    wait_until(lambda: leader.step().leading, timeout=20, what="leadership back with quorum")
    assert leader.etcd_ok
    client.close()
