"""End to end: a planned move lowers the TTL, waits out the old one, moves, restores it; on
a real ``named`` (RFC 2136) and on moto's Route53. A sampler records every distinct
(TTL, answer) the backend holds, with when it was first seen."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests import test_e2e_bind as bind
from tests.service import Deployment
from tests.support import ROOT, MotoServer, trafficflip_command, wait_until

OLD_TTL, SHORT_TTL = 3, 1
State = tuple[int | None, str]


class Sampler:
    """Reads the backend in a loop (bounded: it stops when told or after ``limit`` s)."""

    def __init__(self, read: Callable[[], State], limit: float = 60.0) -> None:
        self.seen: list[tuple[float, State]] = []
        self._read, self._stop, self._limit = read, threading.Event(), limit
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self._limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                state = self._read()
            except Exception:  # a read between writes: try again
                continue
            if not self.seen or self.seen[-1][1] != state:
                self.seen.append((time.monotonic(), state))
            self._stop.wait(0.02)

    def states(self) -> list[State]:
        return [state for _, state in self.seen]

    def wait_for(self, state: State, timeout: float, log: Callable[[], str]) -> None:
        wait_until(
            lambda: bool(self.seen) and self.seen[-1][1] == state,
            timeout=timeout,
            what=f"{state}; saw {self.states()}\n{log()}",
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def plan_the_ttl(config: Path, key: str = "services") -> None:
    data = yaml.safe_load(config.read_text())
    service = data[key][0]
    service["ttl"] = OLD_TTL
    service["planned"] = {"ttl": SHORT_TTL}
    service["failback"]["step_duration"] = f"{OLD_TTL}s"
    config.write_text(yaml.safe_dump(data))


def check_sequence(sampler: Sampler, before: str, mixed: str, after: str) -> None:
    """The TTL goes down with the answer unchanged, the move starts no earlier than the old
    TTL after that, runs with the short TTL, and ends with the TTL restored."""
    states = sampler.states()
    assert states[:2] == [(OLD_TTL, before), (SHORT_TTL, before)], states
    assert states[-1] == (OLD_TTL, after), states
    assert (SHORT_TTL, mixed) in states, states
    lowered_at = sampler.seen[1][0]
    moved_at = next(at for at, (_, answer) in sampler.seen if answer != before)
    # The short TTL is written before the service stamps it applied: the wait can only be longer.
    assert moved_at - lowered_at >= OLD_TTL - 0.1, sampler.seen


def journal_kinds(status_json: str) -> list[str]:
    return [e["kind"] for e in json.loads(status_json)["journal"]]


def test_a_planned_move_on_route53_lowers_the_ttl_first(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    deployment = Deployment(tmp_path, moto_server)
    plan_the_ttl(deployment.config)

    def read() -> State:
        sets = deployment.route53.list_resource_record_sets(HostedZoneId=deployment.zone_id)
        ours = [r for r in sets["ResourceRecordSets"] if "SetIdentifier" in r]
        ttls = {r["TTL"] for r in ours}
        weights = ",".join(
            f"{r['SetIdentifier']}={r['Weight']}"
            for r in sorted(ours, key=lambda r: r["SetIdentifier"])
        )
        return (ttls.pop() if len(ttls) == 1 else None), weights

    sampler: Sampler | None = None
    try:
        deployment.start()
        wait_until(lambda: read() == (OLD_TTL, "dr=0,primary=100"), timeout=20, what="initial")
        sampler = Sampler(read)
        result = deployment.cli("failover", "www", "--to", "dr", "--reason", "planned")
        assert result.returncode == 0, result.stderr
        sampler.wait_for((OLD_TTL, "dr=100,primary=0"), 30, deployment.output)
        sampler.stop()
        check_sequence(sampler, "dr=0,primary=100", "dr=50,primary=50", "dr=100,primary=0")
        assert deployment.process is not None and deployment.process.stop() == 0
        status = deployment.cli("status", "--json", "--journal", "50").stdout
        kinds = journal_kinds(status)
        order = [
            "ttl_lowering",
            "ttl_lowered",
            "planned_move_started",
            "planned_move_completed",
            "ttl_restored",
        ]
        assert [k for k in kinds if k in order] == order, kinds
    finally:
        if sampler is not None:
            sampler.stop()
        deployment.close()


@pytest.mark.skipif(not bind.AVAILABLE, reason="needs named and root")
def test_a_planned_move_on_bind_lowers_the_ttl_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("TRAFFICFLIP_")]:
        monkeypatch.delenv(key)
    deployment = bind.Deployment(tmp_path)
    plan_the_ttl(deployment.config)
    named = deployment.named

    def read() -> State:
        return named.ttl(bind.RECORD, "A"), ",".join(sorted(named.values(bind.RECORD, "A")))

    primary, both, standby = (
        bind.PRIMARY,
        ",".join(sorted([bind.PRIMARY, bind.STANDBY])),
        bind.STANDBY,
    )
    sampler: Sampler | None = None
    try:
        deployment.start()
        wait_until(lambda: read() == (OLD_TTL, primary), timeout=20, what="initial answer")
        sampler = Sampler(read)
        result = bind_cli(deployment, "failover", "www", "--to", "standby")
        assert result.returncode == 0, result.stderr
        sampler.wait_for((OLD_TTL, standby), 30, deployment.log)
        sampler.stop()
        check_sequence(sampler, primary, both, standby)
        assert "ttl_lowered www: TTL 1s in place; the move starts at" in deployment.log()
    finally:
        if sampler is not None:
            sampler.stop()
        deployment.close()


def bind_cli(deployment: bind.Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*trafficflip_command(*args), "--config", str(deployment.config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, **deployment.env},
    )
