"""What a new user hit with the docs only (issue 18): exit codes, and messages that say what
to do next."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import service, service_data
from tests.named import AVAILABLE, KEY_NAME, ZONE, Named
from tests.support import free_port, trafficflip_command
from trafficflip.cli import render_status
from trafficflip.operations.status import summarize, waits_for

ENV = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICFLIP_")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        trafficflip_command(*args), capture_output=True, text=True, env=env or ENV, timeout=60
    )


def write_config(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "trafficflip.yaml"
    data = {
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "providers": {"aws": {"type": "route53"}},
        "services": [service_data(name) for name in names],
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_command_on_an_unknown_service_exits_1_listing_the_services(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["www", "api"])
    result = run("hold", "wwww", "--config", str(config), "--wait", "0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "error: unknown service 'wwww' (services: api, www)"


def test_for_and_until_name_the_option(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, ["www"]))
    cases = [
        (["--for", "2mins"], "--for: invalid duration '2mins'"),
        (["--for", "9000h"], "--for: must be longer than 0s and at most 366d"),
        (["--until", "25:99"], "--until: '25:99' is not HH:MM or an ISO 8601 time"),
        (["--until", "2001-01-01T00:00:00+00:00"], "--until: "),
    ]
    for option, message in cases:
        result = run("hold", "www", "--config", config, "--wait", "0", *option)
        assert result.returncode == 2, (option, result.stderr)
        assert result.stderr.startswith(message), (option, result.stderr)
    help_text = run("drain", "--help").stdout
    assert "--for DURATION" in help_text and "--until TIME" in help_text
    assert "FOR_" not in help_text


class Stub:
    """An HTTP server on loopback answering every request with ``status`` and ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body, self.requests = status, body, []  # type: list[Any]
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                stub.requests.append(json.loads(self.rfile.read(length) or b"null"))
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                data = json.dumps(stub.body).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def unauthorized() -> Iterator[Stub]:
    stub = Stub(401, {"detail": "a bearer token is required"})
    yield stub
    stub.close()


def test_api_without_a_token_names_the_variable(unauthorized: Stub) -> None:
    result = run("status", "--api", unauthorized.url)
    assert result.returncode == 1
    assert "set TRAFFICFLIP_API_TOKEN" in result.stderr, result.stderr
    result = run("hold", "www", "--api", unauthorized.url)
    assert result.returncode == 1 and "set TRAFFICFLIP_API_TOKEN" in result.stderr


def test_reload_asks_the_api_and_passes_allow_removal() -> None:
    stub = Stub(400, {"result": "rejected", "problems": ["services: the reload would remove"]})
    try:
        result = run("reload", "--api", stub.url)
        assert result.returncode == 1 and "would remove" in result.stderr
        stub.status, stub.body = 200, {"result": "reloaded"}
        result = run("reload", "--api", stub.url, "--allow-removal")
        assert result.returncode == 0 and result.stdout.strip() == "reloaded"
        assert stub.requests == [{}, {"allow_removal": True}]
    finally:
        stub.close()
    assert run("reload").returncode == 2


def test_counts_read_in_the_singular() -> None:
    summary = summarize(["normal"], None, None)
    assert summary.line().startswith("1 service: 1 normal")
    text = render_status(summary, [], [], show_all=False)
    assert "1 services" not in text


def test_a_drain_says_what_it_waits_for() -> None:
    www = service(failback={"stabilize": "2m", "steps": [50, 100], "step_duration": "1m"})
    assert waits_for("drain", www) == (
        "traffic moves once the sites taking it have been up for failback.stabilize (2m), "
        "then in 2 steps of 1m"
    )
    assert waits_for("failover", www) == waits_for("drain", www)
    assert waits_for("hold", www) == ""


def test_the_cli_prints_the_api_note() -> None:
    note = "traffic moves once the sites taking it have been up for failback.stabilize (2m)"
    stub = Stub(200, {"command": "drain", "result": "ok", "note": note, "service": {}})
    try:
        result = run("drain", "www", "primary", "--api", stub.url)
    finally:
        stub.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"drain www: ok; {note}"


@pytest.mark.skipif(not AVAILABLE, reason="needs BIND's named (and root)")
def test_live_checks_and_plan_say_what_is_wrong_with_the_server(tmp_path: Path) -> None:
    named = Named(tmp_path / "named").start()
    try:

        def config(server: str, zone: str, secret: str = named.secret) -> str:
            data = {
                "state": f"sqlite:///{tmp_path / 'state.db'}",
                "providers": {
                    "bind": {
                        "type": "rfc2136",
                        "server": server,
                        "tsig": {"name": KEY_NAME, "secret": secret},
                    }
                },
                "services": [
                    service_data("www", provider="bind", zone=zone, record=f"www.{zone}", ttl=60)
                ],
            }
            path = tmp_path / "trafficflip.yaml"
            path.write_text(yaml.safe_dump(data))
            return str(path)

        good = run("check-config", "--live", "--config", config(named.address, ZONE))
        assert good.returncode == 0, good.stdout
        assert good.stdout.splitlines() == [
            "config OK: 1 service",
            "live OK: provider bind (rfc2136, 1 service): every zone answers and the key may "
            "update every service's RRset",
        ]
        assert run("plan", "--config", config(named.address, ZONE)).returncode == 0
        unserved = config(named.address, "other.test.")
        live = run("check-config", "--live", "--config", unserved)
        assert live.returncode == 1
        assert f"REFUSED: is other.test. served by {named.address}?" in live.stdout
        down = config(f"127.0.0.1:{free_port()}", ZONE)
        live = run("check-config", "--live", "--config", down)
        assert live.returncode == 1
        assert live.stdout.startswith("providers.bind.server: no DNS server answers at 127.0.0.1:")
        assert "does the server listen on that address and port?" in live.stdout
        for broken in (unserved, down, config(named.address, ZONE, secret="c2VjcmV0")):
            plan = run("plan", "--config", broken)
            assert plan.returncode == 1, plan.stdout
            assert "error: provider bind could not be read" in plan.stderr
    finally:
        named.stop()
