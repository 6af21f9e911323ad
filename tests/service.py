"""A running ``trafficflip run`` with its API on loopback, for the operations tests.

Moto's Route53 server is the backend, two loopback HTTP sites are the checks, and a local
webhook receiver collects notifications. Everything is stopped by PID.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import ROOT, HttpSite, MotoServer, Process, free_port, trafficflip_command

INTERVAL, FALL, RISE = 0.2, 2, 2
TOKEN = "tf-test-token-0123456789"
PRIMARY = {"primary": 100, "dr": 0}
STANDBY = {"primary": 0, "dr": 100}


class Receiver:
    """A loopback webhook receiver that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                body["_path"], body["_auth"] = self.path, self.headers.get("Authorization")
                receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, path: str = "/json") -> list[str]:
        return [b["event"] for b in self.bodies if b["_path"] == path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Deployment:
    """Two loopback sites, a Route53 hosted zone in moto, and ``trafficflip run`` on them.

    ``TRAFFICFLIP_CONFIG`` is in ``env``, so CLI commands find the config without ``--config``.
    """

    def __init__(
        self,
        tmp_path: Path,
        moto: MotoServer,
        *,
        steps: list[int] | None = None,
        step_duration: str = "1s",
        env: dict[str, str] | None = None,
        names: tuple[str, ...] = ("www",),
        fall: int = FALL,
    ) -> None:
        self.tmp_path = tmp_path
        self.names, self.fall = names, fall
        self.config = tmp_path / "trafficflip.yaml"
        self.env = {**moto.env(), "TRAFFICFLIP_CONFIG": str(self.config), **(env or {})}
        self.route53 = moto.client("route53")
        zone = self.route53.create_hosted_zone(Name="example.com.", CallerReference="e2e")
        self.zone_id = zone["HostedZone"]["Id"]
        self.primary, self.dr = HttpSite().start(), HttpSite().start()
        self.config.write_text(yaml.safe_dump(self.config_data(steps or [50, 100], step_duration)))
        self.process: Process | None = None
        self.runs = 0

    def config_data(self, steps: list[int], step_duration: str) -> dict[str, Any]:
        return {
            "state": f"sqlite:///{self.tmp_path / 'state.db'}",
            "reconcile_interval": "2s",
            "log_level": "debug",
            "providers": {"aws": {"type": "route53"}},
            "services": [
                {
                    "name": name,
                    "provider": "aws",
                    "zone": "example.com.",
                    "record": f"{name}.example.com.",
                    "type": "A",
                    "ttl": 1,
                    "health": {
                        "interval": INTERVAL,
                        "timeout": 0.15,
                        "fall": self.fall,
                        "rise": RISE,
                    },
                    "failback": {"stabilize": "1s", "steps": steps, "step_duration": step_duration},
                    "sites": [
                        {
                            "name": "primary",
                            "targets": ["192.0.2.10"],
                            "checks": [{"type": "http", "url": self.primary.url, "body": "ok"}],
                        },
                        {
                            "name": "dr",
                            "targets": ["198.51.100.20"],
                            "checks": [{"type": "http", "url": self.dr.url}],
                        },
                    ],
                }
                for name in self.names
            ],
        }

    def start(self) -> None:
        self.runs += 1
        self.process = Process(
            trafficflip_command("run", "--config", str(self.config)),
            env=self.env,
            log=self.tmp_path / f"run{self.runs}.log",
            cwd=ROOT,
        )

    def weights(self, name: str = "www") -> dict[str, int]:
        sets = self.route53.list_resource_record_sets(HostedZoneId=self.zone_id)
        return {
            r["SetIdentifier"]: r["Weight"]
            for r in sets["ResourceRecordSets"]
            if r["Name"] == f"{name}.example.com." and "SetIdentifier" in r
        }

    def output(self) -> str:
        return self.process.output() if self.process else ""

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            trafficflip_command(*args),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**os.environ, **self.env, **(env or {})},
        )

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.primary.stop()
        self.dr.stop()


class Service(Deployment):
    """A deployment with its API on a free port, API tokens and a webhook receiver."""

    def __init__(
        self,
        tmp_path: Path,
        moto: MotoServer,
        *,
        tokens: dict[str, str] | None = None,
        steps: list[int] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.receiver = Receiver()
        env = {
            "TRAFFICFLIP_API__LISTEN": f"127.0.0.1:{self.port}",
            "TRAFFICFLIP_API__TOKENS": json.dumps({"ops": TOKEN} if tokens is None else tokens),
            **(extra_env or {}),
        }
        super().__init__(tmp_path, moto, steps=steps, env=env)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def config_data(self, steps: list[int], step_duration: str) -> dict[str, Any]:
        return {
            **super().config_data(steps, step_duration),
            "notify": [
                {"name": "generic", "url": self.receiver.url("/json")},
                {"name": "chat", "url": self.receiver.url("/slack"), "format": "slack"},
            ],
        }

    def answering(self) -> bool:
        assert self.process is not None and self.process.alive(), self.output()
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, body: dict[str, Any] | None = None, token: str = TOKEN) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(path, json=body, headers=headers)

    def www(self) -> dict[str, Any]:
        response = self.get("/api/v1/services/www?journal=50")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def close(self) -> None:
        super().close()
        self.http.close()
        self.receiver.stop()
