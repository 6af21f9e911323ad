"""The Prometheus alerting rules in deploy/prometheus: valid, and each one unit-tested with
``promtool test rules`` (Debian's ``prometheus`` package ships promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES, TESTS = RULES_DIR / "trafficflip-rules.yaml", RULES_DIR / "trafficflip-rules.test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian's prometheus; make test installs it as root)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=RULES_DIR
    )


@needs_promtool
def test_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = [c for t in yaml.safe_load(TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for alert in rules:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{alert}: no case where it stays quiet"
    required = {
        "TrafficflipFailover",
        "TrafficflipFailedOverTooLong",
        "TrafficflipAllSitesDown",
        "TrafficflipProviderErrors",
        "TrafficflipNoReconcile",
        "TrafficflipUnsyncedChange",
        "TrafficflipSchedulerLagging",
        "TrafficflipNoLeader",
    }
    assert required <= rules
