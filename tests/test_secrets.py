"""No secret in any output: a service run at debug level with known secrets, every output
searched (logs, API responses, metrics, status page, OpenAPI, journal, the state file)."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest
import yaml

from tests.service import STANDBY, Service
from tests.support import MotoServer, free_port, wait_until


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_in_any_output(tmp_path: Path, moto_server: MotoServer, log_format: str) -> None:
    known = {
        "tsig": base64.b64encode(secrets.token_bytes(32)).decode(),
        "aws_key_id": "AKIA" + secrets.token_hex(8).upper(),
        "aws_secret": secrets.token_urlsafe(30),
        "api_token": secrets.token_urlsafe(24),
        "hook_path": secrets.token_hex(12),
        "hook_header": secrets.token_urlsafe(18),
        "check_header": secrets.token_urlsafe(18),
        "check_query": secrets.token_hex(12),
    }
    env = {
        "AWS_ACCESS_KEY_ID": known["aws_key_id"],
        "AWS_SECRET_ACCESS_KEY": known["aws_secret"],
        "TRAFFICFLIP_PROVIDERS__BIND__TSIG__SECRET": known["tsig"],
        "TRAFFICFLIP_LOG_FORMAT": log_format,
        "TRAFFICFLIP_LOG_LEVEL": "DEBUG",
    }
    service = Service(tmp_path, moto_server, tokens={"ops": known["api_token"]}, extra_env=env)
    config = yaml.safe_load(service.config.read_text())
    add_secret_config(config, service, known)
    service.config.write_text(yaml.safe_dump(config))
    try:
        service.start()
        wait_until(service.answering, timeout=20, what="the API")
        wait_until(lambda: service.www()["shares"], timeout=20, what="a decision")
        service.primary.stop()
        wait_until(lambda: service.weights() == STANDBY, timeout=10, what="failover")
        wait_until(
            lambda: any(e["kind"] == "provider_error" for e in journal(service, "dns")),
            timeout=15,
            what="the rfc2136 provider failing",
        )
        wait_until(lambda: service.receiver.bodies, timeout=5, what="a notification")
        outputs = collect(service, known)
    finally:
        service.close()
    outputs["log"] = service.output()
    assert "DEBUG" in outputs["log"] or '"level": "debug"' in outputs["log"]
    assert service.receiver.bodies[0]["_path"] == f"/hook/{known['hook_path']}"  # it was used
    for where, text in outputs.items():
        for name, secret in known.items():
            assert secret not in text, f"{name} found in {where}"
    state = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    for name, secret in known.items():
        assert secret.encode() not in state, f"{name} found in the state store"


def add_secret_config(config: dict[str, object], service: Service, known: dict[str, str]) -> None:
    """A second, rfc2136 service at a closed port with the TSIG key; secrets in a check's
    header and query string and in a webhook's URL and header."""
    providers = config["providers"]
    assert isinstance(providers, dict)
    providers["bind"] = {
        "type": "rfc2136",
        "server": f"127.0.0.1:{free_port()}",
        "timeout": "0.5s",
        "tsig": {"name": "trafficflip."},
    }
    config["notify"] = [
        {
            "name": "hook",
            "url": service.receiver.url(f"/hook/{known['hook_path']}"),
            "headers": {"X-Hook-Token": known["hook_header"]},
        }
    ]
    services = config["services"]
    assert isinstance(services, list)
    www = services[0]
    www["sites"][0]["checks"][0]["headers"] = {"Authorization": f"Bearer {known['check_header']}"}
    www["sites"][1]["checks"][0]["url"] = f"{service.dr.url}?key={known['check_query']}"
    dns = json.loads(json.dumps(www))
    dns.update(name="dns", provider="bind", zone="example.net.", record="www.example.net.")
    services.append(dns)


def journal(service: Service, name: str) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = service.get(f"/api/v1/services/{name}?journal=50").json()[
        "journal"
    ]
    return entries


def collect(service: Service, known: dict[str, str]) -> dict[str, str]:
    """Every output a person or a scraper can see, after authorized and refused calls."""
    outputs: dict[str, str] = {}
    hold = "/api/v1/services/www/hold"
    outputs["refused"] = service.post(hold, {"reason": "x"}, token="wrong").text
    outputs["hold"] = service.post(hold, {"reason": "x"}, token=known["api_token"]).text
    outputs["release"] = service.post("/api/v1/services/www/release", token=known["api_token"]).text
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/openapi.json",
        "/api/v1/services?journal=50",
        "/api/v1/services/dns?journal=50",
    ):
        outputs[path] = service.get(path).text
    status = service.cli("status", "--json", "--journal", "50", "--config", str(service.config))
    outputs["status --json"] = status.stdout + status.stderr
    outputs["plan"] = service.cli("plan", "--config", str(service.config)).stdout
    return outputs
