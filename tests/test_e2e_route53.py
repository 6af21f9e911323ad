"""End to end: ``trafficflip run`` as a subprocess, moto's Route53 server, real loopback sites."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, Deployment
from tests.support import CountingProxy, MotoServer, wait_until


@pytest.fixture
def deployment(tmp_path: Path, moto_server: MotoServer) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, moto_server, steps=[25, 50, 100])
    yield deployment
    deployment.close()


def record_until(
    deployment: Deployment, want: dict[str, int], timeout: float
) -> list[dict[str, int]]:
    """Every distinct weight state seen until ``want``.

    Route53 applies a batch atomically; moto applies it change by change, so a listing may
    catch a batch half done (weights not summing to 100). Those moments are skipped.
    """
    seen: list[dict[str, int]] = []

    def reached() -> bool:
        weights = deployment.weights()
        if sum(weights.values()) == 100 and (not seen or seen[-1] != weights):
            seen.append(weights)
        return weights == want

    wait_until(reached, timeout=timeout, what=f"weights {want}, saw {seen}")
    return seen


def test_failover_and_gradual_failback(deployment: Deployment) -> None:
    deployment.start()
    wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
    deployment.primary.stop()
    # The deadline is the acceptance bound: fall x interval plus one second.
    wait_until(
        lambda: deployment.weights() == STANDBY,
        timeout=FALL * INTERVAL + 1.0,
        what="failover to dr",
    )
    deployment.primary.start()
    seen = record_until(deployment, PRIMARY, timeout=20)
    intermediate = [w for w in seen if 0 < w["primary"] < 100]
    assert intermediate, seen
    assert [w["primary"] for w in intermediate] == sorted(w["primary"] for w in intermediate)
    assert all(w != STANDBY for w in seen[seen.index(intermediate[0]) :])
    assert deployment.process is not None
    assert deployment.process.stop() == 0  # SIGTERM stops cleanly
    status = deployment.cli("status", "--journal", "20")
    for event in ("www failover: primary down", "failback_started", "failback_completed"):
        assert event in status.stdout, status.stdout
    log = deployment.process.output()
    check = f"http {deployment.primary.url}"
    assert f"failover www: primary down ({check} connect refused x2) -> dr" in log
    # Health transitions are logged with their check, and a returning site's stabilize.
    assert f"site_down service=www site=primary reason='{check} connect refused x2'" in log
    assert f"site_up service=www site=primary checks='{check}' stabilizing until" in log


def test_sigkill_mid_ramp_resumes_at_the_same_step(tmp_path: Path, moto_server: MotoServer) -> None:
    deployment = Deployment(tmp_path, moto_server, steps=[25, 50, 75, 100], step_duration="3s")
    try:
        deployment.start()
        wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
        deployment.primary.stop()
        wait_until(lambda: deployment.weights() == STANDBY, timeout=5, what="failover")
        deployment.primary.start()
        wait_until(lambda: deployment.weights().get("primary") == 25, timeout=10, what="step 1")
        assert deployment.process is not None
        deployment.process.stop(signal.SIGKILL)
        deployment.start()
        seen = record_until(deployment, PRIMARY, timeout=30)
        # Never a repeated failover, never a jump: every state seen is a step of the ramp.
        assert [w["primary"] for w in seen] == [25, 50, 75, 100], seen
        status = json.loads(deployment.cli("status", "--json", "--journal", "50").stdout)
        assert [e["kind"] for e in status["journal"]].count("failover") == 1
    finally:
        deployment.close()


def test_operator_failover_and_failback_through_the_state_store(deployment: Deployment) -> None:
    deployment.start()
    wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
    result = deployment.cli("failover", "www", "--to", "dr", "--reason", "maintenance")
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
    seen = record_until(deployment, STANDBY, timeout=15)
    assert any(0 < w["dr"] < 100 for w in seen), seen  # moved along the steps
    assert deployment.cli("status").stdout.count("pinned to dr") == 1
    result = deployment.cli("failback", "www")
    assert result.returncode == 0, result.stderr
    record_until(deployment, PRIMARY, timeout=20)
    status = deployment.cli("status", "--journal", "30").stdout
    assert "failover to dr requested (maintenance) by cli" in status


def test_plan_shows_changes_without_applying(deployment: Deployment) -> None:
    result = deployment.cli("plan")
    assert result.returncode == 0, result.stderr
    assert "+ www.example.com. A primary: 192.0.2.10 weight 100 ttl 1" in result.stdout
    assert "Creates=2, Updates=0, Deletes=0" in result.stdout
    assert deployment.weights() == {}
    assert not (deployment.tmp_path / "state.db").exists()  # a preview creates nothing


def test_plan_with_a_down_primary_writes_nothing(tmp_path: Path, moto_server: MotoServer) -> None:
    """Several services, a dead primary under fall 3 / rise 2: the plan shows the failover
    (it probes until every check is decided), and neither the backend nor the state moves."""
    names = ("www", "api", "app")
    deployment = Deployment(tmp_path, moto_server, names=names, fall=3)
    proxy = CountingProxy(moto_server.url)
    try:
        deployment.start()
        for name in names:
            wait_until(lambda n=name: deployment.weights(n) == PRIMARY, timeout=20, what=name)
        assert deployment.process is not None and deployment.process.stop() == 0
        state = tmp_path / "state.db"
        before = state.read_bytes()
        journal = deployment.cli("status", "--json", "--journal", "50").stdout
        deployment.primary.stop()
        result = deployment.cli("plan", env={"AWS_ENDPOINT_URL": proxy.url})
        assert result.returncode == 0, result.stderr
        for name in names:
            assert f"failover {name}: primary down" in result.stdout, result.stdout
            moved = "dr: 198.51.100.20 weight 0 ttl 1 -> 198.51.100.20 weight 100"
            assert f"~ {name}.example.com. A {moved}" in result.stdout
        assert "WARNING" not in result.stderr, result.stderr  # the plan, not live events
        assert proxy.requests > 0 and proxy.changes == 0  # it read through the proxy, wrote nothing
        assert all(deployment.weights(n) == PRIMARY for n in names)
        assert state.read_bytes() == before
        assert deployment.cli("status", "--json", "--journal", "50").stdout == journal
    finally:
        proxy.stop()
        deployment.close()
