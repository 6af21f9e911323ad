"""End to end, the two promises that broke silently: ``all_down: all`` reaches Route53, and a
failover behind Route53's throttling lands within 5 s. ``trafficflip run`` as a process,
moto's Route53 server (behind a fault-injecting proxy), real loopback sites."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, Deployment
from tests.support import CountingProxy, MotoServer, wait_until

# What the issue measured: four throttles, two changes still pending, two outages.
FAULTS = ["Throttling"] * 4 + ["PriorRequestNotComplete"] * 2 + ["ServiceUnavailable"] * 2
FAILOVER_DEADLINE = 5.0


class TwoPolicies(Deployment):
    """Services ``keep`` and ``all``, each with the ``all_down`` policy of its name."""

    def config_data(self, steps: list[int], step_duration: str) -> dict[str, Any]:
        data = super().config_data(steps, step_duration)
        for service in data["services"]:
            service["all_down"] = service["name"]
        return data


class QuietReconcile(Deployment):
    """No reconcile during the test: every injected fault meets the failover."""

    def config_data(self, steps: list[int], step_duration: str) -> dict[str, Any]:
        return {**super().config_data(steps, step_duration), "reconcile_interval": "5m"}


def test_all_down_all_is_written_to_route53(tmp_path: Path, moto_server: MotoServer) -> None:
    deployment = TwoPolicies(tmp_path, moto_server, names=("keep", "all"))
    try:
        deployment.start()
        for name in ("keep", "all"):
            wait_until(lambda n=name: deployment.weights(n) == PRIMARY, timeout=20, what=name)
        deployment.primary.stop()
        for name in ("keep", "all"):
            wait_until(
                lambda n=name: deployment.weights(n) == STANDBY,
                timeout=FALL * INTERVAL + 2,
                what=f"{name} on dr",
            )
        deployment.dr.stop()
        # Within one provider write of the all_down decision: every site serves.
        wait_until(
            lambda: deployment.weights("all") == {"primary": 50, "dr": 50},
            timeout=FALL * INTERVAL + 2,
            what="all_down=all serving every site",
        )
        assert deployment.weights("keep") == STANDBY  # keep: the last answers stand
        log = deployment.output()
        assert "all_down all: every site is down; all_down=all" in log
        assert "-> every site (all_down=all)" in log
        assert "-> nothing" not in log
    finally:
        deployment.close()


def test_a_failover_lands_within_5s_through_eight_route53_faults(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    proxy = CountingProxy(moto_server.url)
    deployment = QuietReconcile(tmp_path, moto_server, env={"AWS_ENDPOINT_URL": proxy.url})
    try:
        deployment.start()
        wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
        proxy.fail_next(FAULTS)
        killed = time.monotonic()
        deployment.primary.stop()
        wait_until(
            lambda: deployment.weights() == STANDBY,
            timeout=FAILOVER_DEADLINE,
            interval=0.01,
            what="failover through eight faults",
        )
        took = time.monotonic() - killed
        assert proxy.faults_left == 0, f"only {8 - proxy.faults_left} faults met the failover"
        assert took <= FAILOVER_DEADLINE
        print(f"failover through {len(FAULTS)} faults landed {took:.2f}s after the kill")
    finally:
        deployment.close()
        proxy.stop()
