"""End to end (issue 22 B): three instances on a 3-member etcd, Route53 in moto. Entries this
version cannot read do not stop failover, and an operator command lands exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import ClusterDeployment, Instance
from tests.etcd import require_etcd
from tests.support import MotoServer, trafficflip_command, wait_until
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
    # Every instance reads them within READ_EVERY; the primary's death takes longer to see.
    cluster.deployment.primary.status = 503
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=20, what="failover")
    wait_until(
        lambda: all(i.output().count("cluster_entry_skipped") >= 2 for i in cluster.instances),
        timeout=15,
        what="every instance to skip both entries",
    )
    leader = cluster.wait_leader()
    for instance in cluster.instances:
        assert instance.ready() == 200, instance.get("/readyz").text  # type: ignore[union-attr]
        # One warning per entry, however many reads saw it.
        assert instance.output().count("cluster_entry_skipped") == 2, instance.output()[-3000:]
        assert "cluster_loop_died" not in instance.output()
    metrics = leader.get("/metrics").text  # type: ignore[union-attr]
    assert "trafficflip_cluster_malformed_entries_total 2.0" in metrics


def phase_of(instance: Instance) -> str | None:
    response = instance.get("/api/v1/services/www")
    return (
        response.json()["phase"] if response is not None and response.status_code == 200 else None
    )


def last_failover(instance: Instance) -> float | None:
    response = instance.get("/api/v1/summary")
    if response is None or response.status_code != 200:
        return None
    value: float | None = response.json()["last_failover"]
    return value


def test_followers_and_the_status_command_show_what_the_leader_decided(
    cluster: ClusterDeployment,
) -> None:
    leader = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    cluster.deployment.primary.status = 503
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=20, what="failover")
    followers = [i for i in cluster.instances if i is not leader]
    for follower in followers:
        # FOLLOW_EVERY (1 s) plus a rebuild of the snapshot: well inside this deadline.
        wait_until(lambda f=follower: last_failover(f), timeout=5, what="the leader's failover")
        wait_until(lambda f=follower: phase_of(f) == "failed over", timeout=5, what="its phase")
    # A follower started now shows the leader's decision from its first answers on.
    restarted = followers[0]
    assert restarted.process is not None
    restarted.process.stop()
    restarted.start()
    first = wait_until(lambda: phase_of(restarted), timeout=30, what="the API answering")
    answered = time.monotonic()
    seen = [first]
    while phase_of(restarted) != "failed over" and time.monotonic() - answered < 10:
        seen.append(phase_of(restarted) or "")
        time.sleep(0.05)
    took = time.monotonic() - answered
    assert phase_of(restarted) == "failed over" and took < 3, (took, seen)
    # `trafficflip status` in cluster mode reads etcd, not the unused state file.
    result = subprocess.run(
        trafficflip_command("status", "--config", str(restarted.config), "--all"),
        env={**os.environ, **restarted.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "failed over" in result.stdout and "never run" not in result.stdout, result.stdout
    assert "last failover never" not in result.stdout, result.stdout
