"""End to end: three ``trafficflip run`` instances on a 3-member etcd, Route53 in moto."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import LEASE_TTL, ClusterDeployment
from tests.etcd import require_etcd
from tests.support import MotoServer, wait_until
from tests.test_page_chromium import CHROMIUM, Dom, chromium

PRIMARY_ONLY = {"primary": 100, "dr": 0}
DR_ONLY = {"primary": 0, "dr": 100}


@pytest.fixture
def cluster(tmp_path: Path, moto_server: MotoServer) -> Iterator[ClusterDeployment]:
    require_etcd()
    deployment = ClusterDeployment(tmp_path, moto_server, steps=[25, 50, 100], step_duration="3s")
    yield deployment
    deployment.close()


def agreed(cluster: ClusterDeployment, leader: str) -> bool:
    """Every instance names ``leader``, sees all three members, and every check has three
    up votes; every instance is ready."""
    names = {i.name for i in cluster.instances}
    for instance in cluster.instances:
        view = instance.cluster()
        if view is None or view["leader"] != leader:
            return False
        if {m["name"] for m in view["members"]} != names:
            return False
        if not all(sorted(v["votes"].values()) == ["up"] * 3 for v in view["votes"]):
            return False
        if instance.ready() != 200:
            return False
    return True


def test_one_leader_agreed_by_all_writes_the_answers(cluster: ClusterDeployment) -> None:
    leader = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    wait_until(lambda: agreed(cluster, leader.name), timeout=30, what="agreement")
    followers = [i for i in cluster.instances if i is not leader]
    assert not any(i.cluster()["leading"] for i in followers)  # type: ignore[index]
    assert cluster.leader() is leader
    metrics = leader.get("/metrics").text  # type: ignore[union-attr]
    assert f'trafficflip_cluster_leader{{name="{leader.name}"}} 1.0' in metrics
    assert 'trafficflip_cluster_members{state="fresh"} 3.0' in metrics
    assert "trafficflip_cluster_fencing_refusals_total 0.0" in metrics
    # The status page shows the leader, the members and each check's votes.
    if CHROMIUM.exists():
        url = f"http://127.0.0.1:{followers[0].port}/?refresh=60"
        tmp = cluster.deployment.tmp_path
        page = Dom(chromium(tmp, "--virtual-time-budget=2000", "--dump-dom", url))
        text = " ".join(page.text)
        assert f"cluster: leader {leader.name}" in text, text[:2000]
        assert f"{leader.name} (leader)" in text and "up \u2190" in text
    journal = leader.get("/api/v1/services/www?journal=50").json()["journal"]  # type: ignore[union-attr]
    assert [e["kind"] for e in journal if e["kind"] in ("initial", "all_down")] == ["initial"]
    # An operator command on a follower's API lands in etcd; the leader carries it out.
    response = followers[0].post("/api/v1/services/www/failover", {"to": "dr"})
    assert response.status_code == 200 and response.json()["result"].startswith("ok"), response.text
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=15, what="the leader to take it")
    refused = followers[0].post("/api/v1/services/www/failover", {"to": "nowhere"})
    assert refused.status_code == 409, refused.text


class ShareWatch:
    """Polls the primary's weight in the background; records every value seen."""

    def __init__(self, cluster: ClusterDeployment) -> None:
        self.cluster = cluster
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded: stops by itself
        while not self._stop.is_set() and time.monotonic() < deadline:
            weights = self.cluster.weights()
            if weights.get("primary") is not None:
                self.seen.append(weights["primary"])
            self._stop.wait(0.05)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.seen


def test_sigkill_of_the_leader_mid_ramp(cluster: ClusterDeployment) -> None:
    cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    cluster.deployment.primary.status = 503
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=15, what="failover")
    leader = cluster.wait_leader()
    cluster.deployment.primary.status = 200
    wait_until(lambda: cluster.weights().get("primary") == 25, timeout=30, what="ramp step 1")
    watch = ShareWatch(cluster)
    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    survivors = [i for i in cluster.instances if i is not leader]
    new = cluster.wait_leader(survivors, timeout=LEASE_TTL + 2 + 5)
    took = time.monotonic() - killed_at
    print(f"new leader {new.name} {took:.2f}s after SIGKILL of {leader.name}")
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="ramp completes")
    seen = watch.stop()
    assert new is not leader
    assert took <= LEASE_TTL + 2, f"new leader after {took:.1f}s"
    assert 0 not in seen, seen
    assert seen == sorted(seen), f"the primary's weight went back: {seen}"
    # The new leader read again the history its predecessor journaled in etcd: the one
    # failover (a repeated one would be a second) and the failback it had started.
    journal = new.get("/api/v1/services/www?journal=50").json()["journal"]  # type: ignore[union-attr]
    kinds = [e["kind"] for e in journal]
    assert kinds.count("failover") == 1 and "failback_started" in kinds, kinds


RECONCILE_INTERVAL = 2.0  # tests/service.py's Deployment


def test_sigstop_past_the_lease_then_sigcont_writes_nothing(cluster: ClusterDeployment) -> None:
    old = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    old.signal(signal.SIGSTOP)
    survivors = [i for i in cluster.instances if i is not old]
    new = cluster.wait_leader(survivors, timeout=LEASE_TTL + 10)
    response = new.post("/api/v1/services/www/failover", {"to": "dr", "reason": "drill"})
    assert response.status_code == 200, response.text
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=15, what="operator failover")
    old.signal(signal.SIGCONT)
    watch = ShareWatch(cluster)
    # The paused leader wakes with its timers overdue and an old idea of the state; it must
    # see its lease gone and follow.
    wait_until(
        lambda: (v := old.cluster()) is not None and v["leader"] == new.name and not v["leading"],
        timeout=LEASE_TTL + 10,
        what="the old leader to follow",
    )
    deadline = time.monotonic() + 3 * RECONCILE_INTERVAL
    wait_until(lambda: time.monotonic() >= deadline, timeout=3 * RECONCILE_INTERVAL + 5)
    seen = watch.stop()
    assert seen and set(seen) == {0}, f"the primary's weight moved after SIGCONT: {seen}"
    assert cluster.weights() == DR_ONLY
    assert "apply provider=" not in old.output().split("leader_lost")[-1]
