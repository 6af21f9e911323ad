"""The node's health hand-over to the engine (no etcd needed: the votes are set directly)."""

from __future__ import annotations

import inspect
import re

from tests.test_engine import config
from trafficflip.cluster import election as election_module
from trafficflip.cluster import node as node_module
from trafficflip.cluster.election import boottime
from trafficflip.cluster.node import ClusterNode, check_id
from trafficflip.cluster.vote import Vote
from trafficflip.config.schema import ClusterConfig
from trafficflip.decision.model import ProbeResult, Status
from trafficflip.runtime.clock import Clock

UP, DOWN, UNKNOWN = Status.UP, Status.DOWN, Status.UNKNOWN


def node() -> ClusterNode:
    cluster = ClusterConfig(etcd=["http://127.0.0.1:9"], name="edge-a", lease_ttl=3.0)
    return ClusterNode(config(), cluster)


def probe(n: ClusterNode, key: str, ok: bool, times: int) -> None:
    for _ in range(times):
        n.observe(key, ProbeResult(ok, "ok" if ok else "refused", 0.001, 1000.0))


def test_check_ids_are_stable_and_short() -> None:
    first, second = node(), node()
    assert first.ids == second.ids
    assert all(len(i) == 16 for i in first.ids.values())
    assert check_id("x") == check_id("x") != check_id("y")


def test_a_local_status_change_is_queued_for_publishing() -> None:
    n = node()
    key = next(iter(n.ids))
    n._dirty.clear()
    probe(n, key, False, 2)  # fall = 2
    assert n.verdict(key).status is DOWN and n._dirty == {key}


def test_without_votes_a_check_never_counts_as_started() -> None:
    n = node()
    key = next(iter(n.ids))
    probe(n, key, True, 5)
    health = n.voted_health(key)
    assert health.status is UNKNOWN and not health.settled(2)


def test_the_vote_decides_the_status_and_ends_start_up() -> None:
    n = node()
    key = next(iter(n.ids))
    probe(n, key, True, 2)
    n.votes = {n.ids[key]: Vote(DOWN, 990.0, {"edge-a": UP, "edge-b": DOWN, "edge-c": DOWN}, 2)}
    health = n.voted_health(key)
    assert (health.status, health.since) == (DOWN, 990.0) and health.settled(2)


def test_a_split_vote_with_every_member_decided_ends_start_up_as_unknown() -> None:
    n = node()
    key = next(iter(n.ids))
    probe(n, key, True, 2)
    n.votes = {n.ids[key]: Vote(UNKNOWN, None, {"edge-a": UP, "edge-b": DOWN}, 2)}
    assert n.voted_health(key).settled(2)
    n.votes = {n.ids[key]: Vote(UNKNOWN, None, {"edge-a": UP, "edge-b": UNKNOWN}, 2)}
    assert not n.voted_health(key).settled(2)


def test_not_ready_while_etcd_is_away() -> None:
    n = node()
    n.election.etcd_ok, n.election.error = False, "no etcd member answered"
    assert n.not_ready_reasons() == [
        "cluster: etcd unavailable (no quorum?): no etcd member answered"
    ]
    assert n.store  # the store fails fast through the same problem
    n.election.etcd_ok, n.election.leader = True, "edge-b"
    assert n.not_ready_reasons() == []


def test_the_nodes_time_is_injected() -> None:
    """Issue 22 3b: the lease runs on the clock given (CLOCK_BOOTTIME by default), the loop
    and the verdicts on the Clock given, so a test can run a node in virtual time."""
    now = [500.0]
    clock = Clock(lambda: now[0], lambda: 1_700_000_000.0 + now[0])
    cluster = ClusterConfig(etcd=["http://127.0.0.1:9"], name="edge-a", lease_ttl=3.0)
    n = ClusterNode(config(), cluster, clock=clock, lease_clock=lambda: now[0])
    assert n.election.clock() == 500.0
    now[0] += 7
    assert n.election.clock() == 507.0 and n.clock.wall() == 1_700_000_507.0
    assert ClusterNode(config(), cluster).election.clock is boottime
    for module in (node_module, election_module):
        calls = re.findall(r"\btime\.\w+", inspect.getsource(module))
        assert set(calls) <= {"time.clock_gettime", "time.CLOCK_BOOTTIME"}, calls
