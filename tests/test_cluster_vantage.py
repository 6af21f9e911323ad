"""Vantage points cut off from the primary by iptables (each instance its own uid):
one of three cut off moves nothing; two of three fail over within fall x interval + 2 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import (
    DR_ADDRESS,
    PRIMARY_ADDRESS,
    ClusterDeployment,
    Instance,
    cut_off,
    require_root,
)
from tests.etcd import require_etcd
from tests.service import FALL, INTERVAL
from tests.support import MotoServer, wait_until

PRIMARY_ONLY = {"primary": 100, "dr": 0}
DR_ONLY = {"primary": 0, "dr": 100}


@pytest.fixture
def cluster(tmp_path: Path, moto_server: MotoServer) -> Iterator[ClusterDeployment]:
    require_root()
    require_etcd()
    deployment = ClusterDeployment(tmp_path, moto_server, steps=[100], as_uid=True)
    rules: list[tuple[int, str]] = []
    deployment.rules = rules  # type: ignore[attr-defined]
    yield deployment
    for uid, address in rules:
        cut_off(uid, address, remove=True)
    deployment.close()


def cut(cluster: ClusterDeployment, instance: Instance, address: str) -> None:
    cut_off(instance.uid, address)
    cluster.rules.append((instance.uid, address))  # type: ignore[attr-defined]


def primary_votes(instance: Instance) -> dict[str, str]:
    view = instance.cluster()
    if view is None:
        return {}
    [primary] = [v for v in view["votes"] if PRIMARY_ADDRESS in v["check"]]
    return dict(primary["votes"], _status=primary["status"])


def test_one_vantage_cut_off_moves_nothing_two_fail_over(cluster: ClusterDeployment) -> None:
    leader = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    followers = [i for i in cluster.instances if i is not leader]

    first = followers[0]
    cut(cluster, first, PRIMARY_ADDRESS)
    # The leader has counted the cut-off vantage's down vote and still sees the primary up.
    wait_until(
        lambda: primary_votes(leader).get(first.name) == "down",
        timeout=15,
        what="the leader to count the cut-off vantage's vote",
    )
    votes = primary_votes(leader)
    assert votes["_status"] == "up", votes
    assert cluster.weights() == PRIMARY_ONLY
    view = leader.cluster()
    assert view is not None and not any(m["isolated"] for m in view["members"])

    second = followers[1]
    cut_at = time.monotonic()
    cut(cluster, second, PRIMARY_ADDRESS)
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=30, what="failover")
    took = time.monotonic() - cut_at
    print(f"failover {took:.2f}s after the second vantage was cut off")
    assert took <= FALL * INTERVAL + 2, f"failover took {took:.2f}s"


def test_a_vantage_that_sees_every_site_down_is_isolated(cluster: ClusterDeployment) -> None:
    leader = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    cut_off_one = next(i for i in cluster.instances if i is not leader)
    cut(cluster, cut_off_one, PRIMARY_ADDRESS)
    cut(cluster, cut_off_one, DR_ADDRESS)

    def isolated() -> bool:
        view = leader.cluster()
        return view is not None and [m["name"] for m in view["members"] if m["isolated"]] == [
            cut_off_one.name
        ]

    wait_until(isolated, timeout=15, what="the cut-off vantage marked isolated")
    votes = primary_votes(leader)
    assert cut_off_one.name not in votes and votes["_status"] == "up", votes
    metrics = leader.get("/metrics").text  # type: ignore[union-attr]
    assert 'trafficflip_cluster_members{state="isolated"} 1.0' in metrics
    assert cluster.weights() == PRIMARY_ONLY
