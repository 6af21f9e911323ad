"""Vantage points cut off from the primary by iptables (each instance its own uid):
one of three cut off moves nothing; two of three fail over within fall x interval + 2 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import PRIMARY_ADDRESS, ClusterDeployment, Instance, cut_off, require_root
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
    rules: list[int] = []
    deployment.rules = rules  # type: ignore[attr-defined]
    yield deployment
    for uid in rules:
        cut_off(uid, PRIMARY_ADDRESS, remove=True)
    deployment.close()


def primary_votes(instance: Instance) -> dict[str, str]:
    view = instance.cluster()
    if view is None:
        return {}
    [primary] = [v for v in view["votes"] if PRIMARY_ADDRESS in v["check"]]
    return dict(primary["votes"], _status=primary["status"])


def test_one_vantage_cut_off_moves_nothing_two_fail_over(cluster: ClusterDeployment) -> None:
    rules: list[int] = cluster.rules  # type: ignore[attr-defined]
    leader = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    followers = [i for i in cluster.instances if i is not leader]

    first = followers[0]
    cut_off(first.uid, PRIMARY_ADDRESS)
    rules.append(first.uid)
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
    cut_off(second.uid, PRIMARY_ADDRESS)
    rules.append(second.uid)
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=30, what="failover")
    took = time.monotonic() - cut_at
    print(f"failover {took:.2f}s after the second vantage was cut off")
    assert took <= FALL * INTERVAL + 2, f"failover took {took:.2f}s"
