"""The API's shape over an engine with the in-memory provider (FastAPI's TestClient):
read auth, the Host check, the body limit, the command table, the snapshot and summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.test_engine import Rig
from trafficflip.config.schema import ApiConfig
from trafficflip.decision.commands import COMMANDS
from trafficflip.decision.model import JournalEntry
from trafficflip.errors import ConfigError
from trafficflip.operations.api import JOURNAL_MAX, create_app, load_tokens
from trafficflip.operations.metrics import Metrics
from trafficflip.operations.snapshot import STALE, URGENT, SnapshotKeeper
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import Runner
from trafficflip.runtime.state import WriteBatch

TOKEN = "operator-token-0123"


def client(rig: Rig, **api: object) -> httpx.AsyncClient:
    """The app in this event loop, spoken to over ASGI (no socket)."""
    config = ApiConfig.model_validate({"tokens": {"ops": TOKEN}, **api})
    runner = Runner(rig.engine, Prober(), reconcile_interval=30)
    app = create_app(rig.engine, runner, Metrics(rig.engine, runner), load_tokens(config), config)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig(services=3)
    rig.probe("primary", True)
    rig.probe("dr", True)
    await rig.settle()
    yield rig


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_with_read_auth_everything_but_liveness_needs_a_token() -> None:
    rig = Rig(services=3)  # never reconciled: not ready
    api = client(rig, read_auth=True)
    reads = ("/api/v1/services", "/api/v1/services/www", "/api/v1/summary", "/", "/metrics")
    for path in (*reads, "/openapi.json"):
        assert (await api.get(path)).status_code == 401, path
        assert (await api.get(path, headers=AUTH)).status_code == 200, path
    assert (await api.get("/healthz")).status_code == 200
    # Not ready before a reconcile: the code is open, the reasons (names, addresses,
    # provider errors) are not.
    anonymous, authorized = await api.get("/readyz"), await api.get("/readyz", headers=AUTH)
    assert anonymous.status_code == authorized.status_code == 503
    assert anonymous.json()["reasons"] == [] and authorized.json()["reasons"], authorized.text


async def test_without_read_auth_reads_and_the_schema_stay_open() -> None:
    api = client(Rig(services=3))
    for path in ("/api/v1/summary", "/metrics", "/openapi.json"):
        assert (await api.get(path)).status_code == 200, path
    assert (await api.get("/readyz")).json()["reasons"]


SCOPED = {"ops": TOKEN, "grafana": "grafana-token-0123", "prom": "prom-token-0123",
          "oncall": "oncall-token-0123"}  # fmt: skip
SCOPES = {"grafana": ["read"], "prom": ["metrics"], "oncall": ["read", "operate"]}


def scoped_client(rig: Rig) -> httpx.AsyncClient:
    config = ApiConfig.model_validate({"tokens": SCOPED, "scopes": SCOPES, "read_auth": True})
    runner = Runner(rig.engine, Prober(), reconcile_interval=30)
    metrics = Metrics(rig.engine, runner)
    app = create_app(rig.engine, runner, metrics, load_tokens(config), config, reload=_no_problems)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def _no_problems(allow_removal: bool) -> list[str]:
    """A reload that always succeeds."""
    return []


async def test_token_scopes(rig: Rig) -> None:
    api = scoped_client(rig)
    rights = {
        "ops": {"read": 200, "metrics": 200, "operate": 200, "admin": 200},
        "grafana": {"read": 200, "metrics": 200, "operate": 403, "admin": 403},
        "prom": {"read": 403, "metrics": 200, "operate": 403, "admin": 403},
        "oncall": {"read": 200, "metrics": 200, "operate": 200, "admin": 403},
    }
    for name, expected in rights.items():
        auth = {"Authorization": f"Bearer {SCOPED[name]}"}
        seen = {
            "read": (await api.get("/api/v1/summary", headers=auth)).status_code,
            "metrics": (await api.get("/metrics", headers=auth)).status_code,
            "operate": (await api.post("/api/v1/services/s1/release", headers=auth)).status_code,
            "admin": (await api.post("/api/v1/reload", headers=auth)).status_code,
        }
        assert seen == expected, name
    refused = await api.post("/api/v1/reload", headers={"Authorization": "Bearer prom-token-0123"})
    assert refused.json()["detail"] == "token prom lacks the admin scope"


def test_scopes_for_an_unknown_token_are_a_config_error() -> None:
    config = ApiConfig.model_validate({"tokens": {"ops": TOKEN}, "scopes": {"opz": ["read"]}})
    with pytest.raises(ConfigError) as caught:
        load_tokens(config)
    assert caught.value.problems == ["api.scopes: no token named opz"]


@pytest.mark.parametrize("forger", ["\u2028", "\u2029", "\u0085", "\u202e", "\u2066"])
async def test_reasons_that_break_or_reorder_a_log_line_are_refused(rig: Rig, forger: str) -> None:
    api = client(rig)
    reason = f"deploy{forger}failover www: primary down"
    response = await api.post("/api/v1/services/s1/hold", json={"reason": reason}, headers=AUTH)
    assert response.status_code == 422, response.text
    fine = await api.post("/api/v1/services/s1/hold", json={"reason": "déployé ✓"}, headers=AUTH)
    assert fine.status_code == 200, fine.text


def test_read_auth_without_a_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_tokens(ApiConfig(read_auth=True))
    assert caught.value.problems == [
        "api.read_auth: needs a token in api.tokens or api.tokens_file"
    ]


def test_tokens_file_names_are_validated(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops team:secret-token\n")
    with pytest.raises(ConfigError) as caught:
        load_tokens(ApiConfig(tokens_file=tokens))
    (problem,) = caught.value.problems
    assert problem.startswith(f"api.tokens_file: {tokens} line 1: the name must match")
    assert "secret-token" not in problem


async def test_host_header_is_checked_against_allowed_hosts(rig: Rig) -> None:
    api = client(rig, allowed_hosts=["trafficflip.internal", "127.0.0.1"])
    assert (
        await api.get("/api/v1/summary", headers={"Host": "trafficflip.internal"})
    ).status_code == 200
    assert (
        await api.get("/api/v1/summary", headers={"Host": "rebound.example"})
    ).status_code == 400
    assert (await api.get("/", headers={"Host": "rebound.example"})).status_code == 400


async def test_request_bodies_above_the_limit_are_refused(rig: Rig) -> None:
    api = client(rig, max_body=1024)
    big = {"reason": "x" * 2000}
    response = await api.post("/api/v1/services/www/hold", json=big, headers=AUTH)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
        for _ in range(4):
            yield b'{"reason": "' + b"x" * 600

    streamed = await api.post("/api/v1/services/www/hold", content=chunks(), headers=AUTH)
    assert streamed.status_code == 413
    assert rig.engine.states["www"].held is False


async def test_journal_page_is_capped(rig: Rig) -> None:
    api = client(rig)
    assert (await api.get(f"/api/v1/services?journal={JOURNAL_MAX}")).status_code == 200
    assert (await api.get(f"/api/v1/services?journal={JOURNAL_MAX + 1}")).status_code == 422


async def test_one_route_per_command_in_the_table(rig: Rig) -> None:
    paths = (await client(rig).get("/openapi.json")).json()["paths"]
    posted = {p.rsplit("/", 1)[1] for p, ops in paths.items() if "post" in ops}
    assert posted == set(COMMANDS)


async def test_commands_apply_and_are_visible_to_the_next_read(rig: Rig) -> None:
    api = client(rig)
    response = await api.post("/api/v1/services/s1/hold", json={"reason": "deploy"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["result"] == "ok"
    assert response.json()["service"]["phase"] == "held"
    view = (await api.get("/api/v1/services/s1")).json()
    assert view["phase"] == "held"
    assert view["journal"][-1]["message"] == "hold: automatic changes frozen (deploy) by api:ops"
    refused = await api.post("/api/v1/services/s1/drain", json={"site": "mars"}, headers=AUTH)
    assert refused.status_code == 409 and "has no site 'mars'" in refused.json()["detail"]
    missing = await api.post("/api/v1/services/s1/drain", json={}, headers=AUTH)
    assert missing.status_code == 422  # a site command needs its site
    assert (await api.post("/api/v1/services/s1/release", headers=AUTH)).status_code == 200


async def test_summary_counts_phases_and_the_list_keeps_config_order(rig: Rig) -> None:
    api = client(rig)
    await api.post("/api/v1/services/s2/hold", headers=AUTH)
    summary = (await api.get("/api/v1/summary")).json()
    assert summary["services"] == 3 and summary["phases"]["held"] == 1
    assert summary["line"].startswith("3 services: ")
    names = [v["name"] for v in (await api.get("/api/v1/services")).json()]
    assert names == ["www", "s1", "s2"]
    sites = [s["name"] for s in (await api.get("/api/v1/services/www")).json()["sites"]]
    assert sites == ["primary", "dr"]


async def test_a_new_leader_reads_its_predecessors_journal_into_its_snapshot() -> None:
    """A cluster node that takes over reads the history again from the shared store; what it
    journaled itself and the store does not hold yet is kept."""
    rig = Rig()
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    keeper = SnapshotKeeper(rig.engine)
    keeper.seed()
    # The previous leader's failover, written to the shared store behind this node's back.
    earlier = JournalEntry(rig.now + 1, "www", "failover", "primary down -> dr", {})
    rig.store.write(WriteBatch({}, [earlier], {}, {}))
    local = JournalEntry(rig.now + 2, "www", "command", "hold by test", {})
    keeper.journaled([local])  # journaled here, not in the store yet
    assert "failover" not in [e.kind for e in keeper.view("www").journal]
    rig.engine.listeners.took_over()
    await keeper.reseed()
    kinds = [e.kind for e in keeper.view("www").journal]
    assert kinds[-2:] == ["failover", "command"], kinds


async def test_a_slow_rebuild_spaces_the_next_ones() -> None:
    """A rebuild of a large fleet takes long: the snapshot waits longer after it, so it uses
    a bounded share of the event loop. A small fleet's waits stay at URGENT and STALE."""
    rig = Rig(services=3)
    keeper = SnapshotKeeper(rig.engine)
    await keeper.rebuild()
    assert keeper.build_seconds < 0.01
    assert keeper.waits() == (URGENT, STALE)
    keeper.build_seconds = 1.5  # a fleet of several thousand services
    assert keeper.waits() == (3.0, 15.0)


async def test_a_command_on_an_unknown_service_lists_the_services(rig: Rig) -> None:
    api = client(rig)
    response = await api.post("/api/v1/services/wwww/hold", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["detail"] == "unknown service 'wwww' (services: s1, s2, www)"


async def test_a_drain_answer_says_it_waits_for_stabilize(rig: Rig) -> None:
    api = client(rig)
    response = await api.post("/api/v1/services/www/drain", json={"site": "primary"}, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["result"] == "ok"
    assert answer["note"].startswith("traffic moves once the sites taking it have been up for")
