"""End to end: ``trafficflip run`` as a subprocess driving a real ``named`` through RFC 2136."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.named import AVAILABLE, KEY_NAME, ZONE, Named
from tests.support import ROOT, HttpSite, Process, trafficflip_command, wait_until

pytestmark = pytest.mark.skipif(
    not AVAILABLE or shutil.which("dig") is None, reason="needs named, dig and root"
)

INTERVAL, FALL, RISE = 0.2, 2, 2
RECORD = f"www.{ZONE}"
PRIMARY, STANDBY = "192.0.2.10", "198.51.100.20"


class Deployment:
    """Two loopback sites, a named serving the zone, a config file and the running service."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.named = Named(tmp_path / "named").start()
        self.primary, self.standby = HttpSite().start(), HttpSite().start()
        self.config = tmp_path / "trafficflip.yaml"
        self.config.write_text(yaml.safe_dump(self._config()))
        # The secret travels as the environment variable operators use, not in the file.
        self.env = {"TRAFFICFLIP_PROVIDERS__BIND__TSIG__SECRET": self.named.secret}
        self.process: Process | None = None

    def _config(self) -> dict[str, Any]:
        health = {"interval": INTERVAL, "timeout": 0.15, "fall": FALL, "rise": RISE}
        site = {"name": "primary", "targets": [PRIMARY], "checks": [self._check(self.primary)]}
        standby = {"name": "standby", "targets": [STANDBY], "checks": [self._check(self.standby)]}
        return {
            "state": f"sqlite:///{self.tmp_path / 'state.db'}",
            "reconcile_interval": "2s",
            "log_level": "debug",
            "providers": {
                "bind": {
                    "type": "rfc2136",
                    "server": self.named.address,
                    "tsig": {"name": KEY_NAME},
                    "timeout": "500ms",
                }
            },
            "services": [
                {
                    "name": "www",
                    "provider": "bind",
                    "zone": ZONE,
                    "record": RECORD,
                    "type": "A",
                    "ttl": 1,
                    "health": health,
                    "failback": {"stabilize": "1s", "steps": [50, 100], "step_duration": "1s"},
                    "sites": [site, standby],
                }
            ],
        }

    @staticmethod
    def _check(site: HttpSite) -> dict[str, str]:
        return {"type": "http", "url": site.url}

    def start(self) -> None:
        self.process = Process(
            trafficflip_command("run", "--config", str(self.config)),
            env=self.env,
            log=self.tmp_path / "run.log",
            cwd=ROOT,
        )

    def answers(self) -> frozenset[str]:
        """What ``dig`` gets from named over TCP; empty while named is down."""
        result = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.named.port), "+tcp", "+short", "+time=1",
             "+tries=1", RECORD, "A"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if result.returncode != 0:
            return frozenset()
        return frozenset(result.stdout.split())

    def log(self) -> str:
        return self.process.output() if self.process else ""

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.primary.stop()
        self.standby.stop()
        self.named.stop()


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    for key in [k for k in os.environ if k.startswith("TRAFFICFLIP_")]:
        monkeypatch.delenv(key)
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.close()


def answers_until(deployment: Deployment, want: frozenset[str], timeout: float) -> list[set[str]]:
    """Every distinct answer seen until ``want``."""
    seen: list[set[str]] = []

    def reached() -> bool:
        answer = set(deployment.answers())
        if not seen or seen[-1] != answer:
            seen.append(answer)
        return answer == want

    wait_until(reached, timeout=timeout, what=f"answers {set(want)}, saw {seen}")
    return seen


def test_failover_then_failback_through_a_mixed_answer(deployment: Deployment) -> None:
    deployment.start()
    wait_until(lambda: deployment.answers() == {PRIMARY}, timeout=20, what="initial answer")
    deployment.primary.stop()
    # The acceptance bound: fall x interval plus one second.
    wait_until(
        lambda: deployment.answers() == {STANDBY},
        timeout=FALL * INTERVAL + 1.0,
        what=f"failover to the standby\n{deployment.log()}",
    )
    deployment.primary.start()
    seen = answers_until(deployment, frozenset({PRIMARY}), timeout=20)
    assert {PRIMARY, STANDBY} in seen, seen
    mixed = seen.index({PRIMARY, STANDBY})
    assert {STANDBY} not in seen[mixed:], seen  # no flapping back once the ramp started
    assert "failover www: primary down" in deployment.log()
    assert deployment.named.secret not in deployment.log()


def test_a_failover_while_named_is_down_lands_once_it_is_back(deployment: Deployment) -> None:
    deployment.start()
    wait_until(lambda: deployment.answers() == {PRIMARY}, timeout=20, what="initial answer")
    deployment.named.stop()
    deployment.primary.stop()
    wait_until(
        lambda: "provider_error provider=bind" in deployment.log(),
        timeout=10,
        what="the failed update to be reported",
    )
    deployment.named.start()
    wait_until(
        lambda: deployment.answers() == {STANDBY},
        timeout=15,
        what=f"the failover to land\n{deployment.log()}",
    )
    assert "kind=network" in deployment.log()
