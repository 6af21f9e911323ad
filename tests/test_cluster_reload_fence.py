"""Issue 22 A1 end to end: a leader reloaded (``POST /api/v1/reload``) and then cut off from
etcd never writes to a provider again, not even the retries it had pending.

Three instances, each its own uid, on a real 3-member etcd and Route53 in moto. The leader
is reloaded, cut off from moto so that a failover it takes stays pending in its retries,
then cut off from etcd. Another instance leads and an operator fails back through it. Then
the old leader reaches moto again: before the fix its reloaded providers were not fenced and
its retry wrote its old term's answers over the new leader's.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.cluster import ClusterDeployment, Instance, require_root
from tests.etcd import require_etcd
from tests.support import MotoServer, wait_until

PRIMARY_ONLY = {"primary": 100, "dr": 0}
DR_ONLY = {"primary": 0, "dr": 100}
# How long the old leader is watched once it reaches moto again: its sync's retries come
# at full-jitter backoff, a few seconds apart after the ten or so seconds it was cut off.
WATCH = 20.0


def port_rule(uid: int, port: int, *, remove: bool = False) -> None:
    """Connections from ``uid`` to 127.0.0.1:``port`` reset at once (one process cut off
    from one server; the other instances still reach it)."""
    subprocess.run(
        ["iptables", "-D" if remove else "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1",
         "--dport", str(port), "-m", "owner", "--uid-owner", str(uid),
         "-j", "REJECT", "--reject-with", "tcp-reset"],
        check=True,
    )  # fmt: skip


class Cuts:
    def __init__(self) -> None:
        self.rules: list[tuple[int, int]] = []

    def cut(self, instance: Instance, port: int) -> None:
        port_rule(instance.uid, port)
        self.rules.append((instance.uid, port))

    def mend(self, instance: Instance, port: int) -> None:
        port_rule(instance.uid, port, remove=True)
        self.rules.remove((instance.uid, port))

    def mend_all(self) -> None:
        for uid, port in list(self.rules):
            port_rule(uid, port, remove=True)
        self.rules = []


@pytest.fixture
def cluster(tmp_path: Path, moto_server: MotoServer) -> Iterator[ClusterDeployment]:
    require_root()
    require_etcd()
    deployment = ClusterDeployment(tmp_path, moto_server, steps=[100], as_uid=True)
    yield deployment
    deployment.close()


@pytest.fixture
def cuts() -> Iterator[Cuts]:
    cuts = Cuts()
    yield cuts
    cuts.mend_all()


def test_a_reloaded_leader_cut_off_from_etcd_never_writes_again(
    cluster: ClusterDeployment, moto_server: MotoServer, cuts: Cuts
) -> None:
    old = cluster.wait_leader()
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="initial answers")
    reloaded = old.post("/api/v1/reload")
    assert reloaded.status_code == 200, reloaded.text

    cuts.cut(old, moto_server.port)
    taken = old.post("/api/v1/services/www/failover", {"to": "dr", "reason": "test"})
    assert taken.status_code == 200 and "queued" not in taken.text, taken.text
    wait_until(
        lambda: "provider_error" in old.output(), timeout=15, what="the leader's write to fail"
    )
    for endpoint in cluster.etcd.endpoints:
        cuts.cut(old, int(urlparse(endpoint).port or 0))
    others = [i for i in cluster.instances if i is not old]
    new = cluster.wait_leader(among=others, timeout=30)
    wait_until(lambda: cluster.weights() == DR_ONLY, timeout=30, what="the new leader's dr")
    back = new.post("/api/v1/services/www/failback", {"reason": "test"})
    assert back.status_code == 200, back.text
    wait_until(lambda: cluster.weights() == PRIMARY_ONLY, timeout=30, what="the failback")

    cuts.mend(old, moto_server.port)
    until = time.monotonic() + WATCH
    while time.monotonic() < until:
        weights = cluster.weights()
        assert weights == PRIMARY_ONLY, f"the deposed leader wrote {weights}\n{cluster.outputs()}"
        time.sleep(0.2)
    assert old.alive()
