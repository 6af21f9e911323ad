"""The HTTP API against a running ``trafficflip run`` (subprocess, loopback, moto Route53)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service import PRIMARY, STANDBY, TOKEN, Service
from tests.support import MotoServer, wait_until


@pytest.fixture
def service(tmp_path: Path, moto_server: MotoServer) -> Iterator[Service]:
    running = Service(tmp_path, moto_server)
    running.start()
    wait_until(running.answering, timeout=20, what="the API")
    wait_until(lambda: running.weights() == PRIMARY, timeout=20, what="initial weights")
    yield running
    running.close()


def journal(service: Service, kind: str = "command") -> list[str]:
    return [e["message"] for e in service.www()["journal"] if e["kind"] == kind]


def test_reads(service: Service) -> None:
    assert service.get("/healthz").json() == {"status": "ok", "reasons": []}
    wait_until(lambda: service.get("/readyz").status_code == 200, timeout=10, what="ready")
    listing = service.get("/api/v1/services").json()
    assert [s["name"] for s in listing] == ["www"]
    # The snapshot shows the provider's change record within its refresh.
    www = wait_until(lambda: (w := service.www())["last_change"] and w, timeout=5, what="change")
    assert www["phase"] == "normal" and www["shares"] == PRIMARY
    primary = www["sites"][0]
    assert primary["name"] == "primary" and primary["share"] == 100 and primary["status"] == "up"
    check = primary["checks"][0]
    assert check["check"] == f"http {service.primary.url}" and check["status"] == "up"
    assert check["reason"].startswith("ok") and 0 < check["latency"] < 1 and check["at"] > 0
    assert www["last_change"]["provider"] == "aws" and www["last_change"]["ids"]
    assert [e["kind"] for e in www["journal"]][:2] == ["initial", "provider_change"]
    assert service.get("/api/v1/services/nope").status_code == 404
    assert service.get("/api/v1/services/www?journal=0").json()["journal"] == []
    assert "/api/v1/services/{name}/failover" in service.get("/openapi.json").json()["paths"]
    assert service.process is not None and service.process.stop() == 0  # SIGTERM stops it all
    assert service.output().rstrip().endswith("INFO stopped"), service.output()[-500:]


def test_auth(service: Service) -> None:
    hold = "/api/v1/services/www/hold"
    response = service.post(hold, token="")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert service.post(hold, token="wrong").status_code == 401
    assert service.post(hold, token=TOKEN + "x").status_code == 401
    response = service.http.post(hold, headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401
    assert service.www()["held"] is False  # nothing was done by a refused call
    response = service.post(hold, {"reason": "looking"})
    assert response.status_code == 200 and response.json()["result"] == "ok", response.text
    assert service.www()["held"] is True
    assert journal(service)[-1] == "hold: automatic changes frozen (looking) by api:ops"
    bad = service.post(hold, {"reason": "a\nforged line"})
    assert bad.status_code == 422  # one line per event: no newline in a reason


def test_operator_failover_and_failback_move_traffic(service: Service) -> None:
    response = service.post("/api/v1/services/www/failover", {"to": "dr", "reason": "maintenance"})
    assert response.status_code == 200, response.text
    assert response.json()["service"]["pinned"] == "dr"
    seen = record_until(service, STANDBY)
    assert any(0 < w["dr"] < 100 for w in seen), seen  # along the steps
    assert journal(service)[-1] == "failover to dr requested (maintenance) by api:ops"
    # Reads come from a snapshot rebuilt soon after a change, not within the same instant.
    wait_until(lambda: phase(service) == ("pinned", "pinned to dr"), timeout=5, what="pinned")
    assert service.post("/api/v1/services/www/failback").status_code == 200
    record_until(service, PRIMARY)
    assert journal(service)[-1] == "pin to dr released; failback approved by api:ops"
    refused = service.post("/api/v1/services/www/failover", {"to": "mars"})
    assert refused.status_code == 409 and "has no site 'mars'" in refused.json()["detail"]
    assert service.post("/api/v1/services/nope/hold").status_code == 404


def test_hold_freezes_and_release_resumes(service: Service) -> None:
    assert service.post("/api/v1/services/www/hold", {"reason": "incident"}).status_code == 200
    service.primary.stop()
    wait_until(
        lambda: service.www()["sites"][0]["status"] == "down", timeout=5, what="primary down"
    )
    assert service.weights() == PRIMARY and service.www()["phase"] == "held"
    assert service.post("/api/v1/services/www/release").status_code == 200
    wait_until(lambda: service.weights() == STANDBY, timeout=5, what="failover after release")
    assert journal(service)[-1] == "release: automatic changes resumed by api:ops"
    wait_until(lambda: journal(service, "failover"), timeout=5, what="the failover journaled")


def test_promote_and_drain(service: Service) -> None:
    response = service.post("/api/v1/services/www/promote", {"site": "dr", "reason": "move"})
    assert response.status_code == 200 and response.json()["service"]["order"] == ["dr", "primary"]
    record_until(service, STANDBY)
    assert journal(service)[-1] == "promote dr: order is now dr, primary (move) by api:ops"
    assert service.post("/api/v1/services/www/drain", {"site": "dr"}).status_code == 200
    seen = record_until(service, PRIMARY)
    assert any(0 < w["primary"] < 100 for w in seen), seen
    assert journal(service)[-1] == "drain dr requested by api:ops"
    # Once the drained site serves nothing, the detail says it is drained, not draining.
    wait_until(lambda: phase(service) == ("draining", "dr drained"), timeout=5, what="drained")


def test_cli_through_the_api(service: Service) -> None:
    api = ["--api", service.url]
    refused = service.cli("hold", "www", *api)
    assert refused.returncode == 1 and "401" in refused.stderr
    env = {"TRAFFICFLIP_API_TOKEN": TOKEN}
    done = service.cli("failover", "www", "--to", "dr", "--reason", "cli", *api, env=env)
    assert done.returncode == 0, done.stderr
    # A planned move waits for stabilize and the steps: the answer says so.
    assert done.stdout.startswith("failover www: ok; traffic moves once the sites taking it")
    record_until(service, STANDBY)
    wait_until(lambda: phase(service)[0] == "pinned", timeout=5, what="pinned")
    status = service.cli("status", env={**env, "TRAFFICFLIP_API_URL": service.url})
    assert "pinned to dr" in status.stdout, status.stdout + status.stderr
    assert "failover to dr requested (cli) by api:ops" in status.stdout
    as_json = json.loads(service.cli("status", "--json", *api).stdout)
    assert as_json["services"][0]["shares"] == STANDBY


def test_readyz_is_503_when_the_provider_is_unreachable(
    service: Service, moto_server: MotoServer
) -> None:
    wait_until(lambda: service.get("/readyz").status_code == 200, timeout=10, what="ready")
    moto_server.stop()
    response = wait_until(
        lambda: (r := service.get("/readyz")).status_code == 503 and r,
        timeout=15,
        what="readyz 503",
    )
    body = response.json()
    assert body["status"] == "not ready" and body["reasons"][0].startswith("provider aws: ")
    assert service.get("/healthz").status_code == 200  # alive, only not ready


def test_mutating_endpoints_are_off_without_tokens(tmp_path: Path, moto_server: MotoServer) -> None:
    running = Service(tmp_path, moto_server, tokens={})
    try:
        running.start()
        wait_until(running.answering, timeout=20, what="the API")
        response = running.post("/api/v1/services/www/hold")
        assert response.status_code == 403 and "no API token" in response.json()["detail"]
        assert running.post("/api/v1/services/www/hold", token="").status_code == 403
    finally:
        running.close()


def test_tokens_file(tmp_path: Path, moto_server: MotoServer) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nalice:alice-token-1\n\nbob: bob-token-2\n")
    running = Service(
        tmp_path, moto_server, tokens={}, extra_env={"TRAFFICFLIP_API__TOKENS_FILE": str(tokens)}
    )
    try:
        running.start()
        wait_until(running.answering, timeout=20, what="the API")
        assert running.post("/api/v1/services/www/hold", token="bob-token-2").status_code == 200
        assert journal(running)[-1] == "hold: automatic changes frozen by api:bob"
        assert running.post("/api/v1/services/www/hold", token=TOKEN).status_code == 401
    finally:
        running.close()


def test_busy_listen_address_is_a_config_error(tmp_path: Path, moto_server: MotoServer) -> None:
    running = Service(tmp_path, moto_server)
    try:
        running.start()
        wait_until(running.answering, timeout=20, what="the API")
        # Another state file: the same one would be refused first, for its lock.
        other = {"TRAFFICFLIP_STATE": f"sqlite:///{tmp_path / 'other.db'}"}
        second = running.cli("run", "--config", str(running.config), env=other)
        assert second.returncode == 2
        assert f"api.listen: cannot listen on 127.0.0.1:{running.port}" in second.stderr
    finally:
        running.close()


def phase(service: Service) -> tuple[str, str]:
    www = service.www()
    return www["phase"], www["detail"]


def record_until(service: Service, want: dict[str, int]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def reached() -> bool:
        weights = service.weights()
        if not seen or seen[-1] != weights:
            seen.append(weights)
        return weights == want

    wait_until(reached, timeout=20, what=f"weights {want}, saw {seen}")
    return seen
