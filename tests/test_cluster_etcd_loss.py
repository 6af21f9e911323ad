"""etcd trouble end to end: one member lost changes nothing; quorum lost makes every
instance unready and stops every provider write; members back, service resumes, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import LEASE_TTL, ClusterDeployment
from tests.etcd import require_etcd
from tests.support import MotoServer, wait_until

PRIMARY_ONLY = {"primary": 100, "dr": 0}
DR_ONLY = {"primary": 0, "dr": 100}


@pytest.fixture
def cluster(tmp_path: Path, moto_server: MotoServer) -> Iterator[ClusterDeployment]:
    require_etcd()
    deployment = ClusterDeployment(tmp_path, moto_server, steps=[100])
    yield deployment
    deployment.close()


def command(cluster: ClusterDeployment, name: str, body: dict[str, str]) -> None:
    leader = cluster.wait_leader()
    response = leader.post(f"/api/v1/services/www/{name}", body)
    assert response.status_code == 200, response.text


def test_member_loss_then_quorum_loss_then_recovery(cluster: ClusterDeployment) -> None:
    cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    command(cluster, "failover", {"to": "dr", "reason": "before etcd trouble"})
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=15, what="operator failover")

    cluster.etcd.kill(0)  # the member every client tries first
    command(cluster, "failback", {"reason": "one etcd member down"})
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=15, what="failback lands")
    assert all(i.ready() == 200 for i in cluster.instances)

    lost_at = time.monotonic()
    cluster.etcd.kill(1)
    wait_until(
        lambda: all(i.ready() == 503 for i in cluster.instances),
        timeout=LEASE_TTL + 5,
        what="every instance unready",
    )
    took = time.monotonic() - lost_at
    print(f"all unready {took:.2f}s after quorum loss")
    assert took <= LEASE_TTL + 5, f"unready after {took:.2f}s"
    for instance in cluster.instances:
        reasons = instance.get("/readyz").json()["reasons"]  # type: ignore[union-attr]
        assert any("etcd" in r for r in reasons), reasons
    # The primary fails meanwhile: nobody may write, the last answer stays.
    cluster.deployment.primary.status = 503
    wait_until(
        lambda: all("ERROR etcd_unavailable" in i.output() for i in cluster.instances),
        timeout=10,
        what="an ERROR logged by every instance",
    )
    wait_until(
        lambda: all(not (i.cluster() or {"leading": True})["leading"] for i in cluster.instances),
        timeout=LEASE_TTL + 5,
        what="no instance leading",
    )
    assert cluster.weights() == PRIMARY_ONLY

    cluster.etcd.restart(0)
    cluster.etcd.restart(1)
    wait_until(
        lambda: all(i.ready() == 200 for i in cluster.instances),
        timeout=30,
        what="every instance ready again",
    )
    leader = cluster.wait_leader()
    # Service resumes by itself: the primary's failure is acted on now.
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=30, what="failover after recovery")
    journal = leader.get("/api/v1/services/www?journal=50").json()["journal"]  # type: ignore[union-attr]
    messages = [e["message"] for e in journal if e["kind"] == "command"]
    assert any("before etcd trouble" in m for m in messages), messages
    assert any("one etcd member down" in m for m in messages), messages
