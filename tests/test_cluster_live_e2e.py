"""End to end (issue 22 B): three instances on a 3-member etcd, Route53 in moto. Entries this
version cannot read do not stop failover, and an operator command lands exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import ClusterDeployment
from tests.etcd import require_etcd
from tests.support import MotoServer, wait_until
from trafficflip.cluster.etcd import EtcdClient

PRIMARY_ONLY = {"primary": 100, "dr": 0}
DR_ONLY = {"primary": 0, "dr": 100}
PREFIX = "/trafficflip"  # the default cluster prefix


@pytest.fixture
def cluster(tmp_path: Path, moto_server: MotoServer) -> Iterator[ClusterDeployment]:
    require_etcd()
    deployment = ClusterDeployment(tmp_path, moto_server, steps=[50, 100], step_duration="2s")
    yield deployment
    deployment.close()


def test_unreadable_entries_in_etcd_do_not_stop_failover(cluster: ClusterDeployment) -> None:
    cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    client = EtcdClient(cluster.etcd.endpoints)
    try:
        # What a newer version (rolling upgrade) or a hand-written key leaves behind.
        primary_check = next(
            kv.key.rsplit("/", 1)[1] for kv in client.range(f"{PREFIX}/verdicts/", prefix=True)
        )
        newer = {"status": "degraded", "since": 1.0, "reason": "newer version"}
        client.put(f"{PREFIX}/verdicts/edge-z/{primary_check}", json.dumps(newer).encode())
        client.put(f"{PREFIX}/members/edge-z", b"not json")
    finally:
        client.close()
    wait_until(
        lambda: all(i.output().count("cluster_entry_skipped") >= 2 for i in cluster.instances),
        timeout=15,
        what="every instance to skip both entries",
    )
    cluster.deployment.primary.status = 503
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=20, what="failover")
    leader = cluster.wait_leader()
    for instance in cluster.instances:
        assert instance.ready() == 200, instance.get("/readyz").text  # type: ignore[union-attr]
        # One warning per entry, however many reads saw it.
        assert instance.output().count("cluster_entry_skipped") == 2, instance.output()[-3000:]
        assert "cluster_loop_died" not in instance.output()
    metrics = leader.get("/metrics").text  # type: ignore[union-attr]
    assert "trafficflip_cluster_malformed_entries_total 2.0" in metrics
