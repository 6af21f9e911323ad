"""A fleet on one Route53 zone: N services, each its own checks, behind a counting proxy.

One primary web server answers every service's primary check (a distinct path each, so
every service has checks of its own, as a real fleet does) and one dr server the dr
checks: stopping the primary server is a site outage that moves every service at once.
Used by the mass-failover test and ``bench/mass_failover.py``.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support import (
    ROOT,
    CountingProxy,
    MotoServer,
    Process,
    free_port,
    trafficflip_command,
    wait_until,
)

PRIMARY, DR = "192.0.2.10", "198.51.100.20"
# A site answering every request with 200 on a raw asyncio protocol, in its own process: a
# fleet's hundreds of probes a second must find the sites cheap, not the test's own threads.
SITE = """
import asyncio, sys
OK = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
class Site(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        if b"\\r\\n\\r\\n" in data:
            self.transport.write(OK)
            self.transport.close()
async def main():
    server = await asyncio.get_running_loop().create_server(Site, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


class SiteProcess:
    """One fleet site; ``stop()`` kills it by PID, so its port refuses connections."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.process = Process(
            [sys.executable, "-c", SITE, str(self.port)], log=tmp / f"site-{name}.log"
        )
        wait_until(self._up, timeout=10, what=f"site {name}")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        self.process.stop()


class Fleet:
    def __init__(
        self,
        tmp: Path,
        moto: MotoServer,
        *,
        services: int,
        calls_per_second: float,
        interval: float = 1.0,
        fall: int = 2,
        shared_checks: bool = False,
        api: bool = False,
    ) -> None:
        """``shared_checks``: every service checks the same URL per site (probed once, so an
        outage moves every service at the same moment); else each service has its own.
        ``api``: serve the operator API (with its status snapshot) on ``api_url``."""
        self.tmp, self.count, self.shared_checks = tmp, services, shared_checks
        self.api_url = f"http://127.0.0.1:{free_port()}" if api else None
        self.proxy = CountingProxy(moto.url, max_changes_per_second=calls_per_second)
        self.route53 = moto.client("route53")
        zone = self.route53.create_hosted_zone(Name="example.com.", CallerReference=str(tmp))
        self.zone_id = zone["HostedZone"]["Id"]
        self.primary, self.dr = SiteProcess(tmp, "primary"), SiteProcess(tmp, "dr")
        self.config = tmp / "fleet.yaml"
        self.config.write_text(yaml.safe_dump(self._config(interval, fall, calls_per_second)))
        self.env = {**moto.env(), "AWS_ENDPOINT_URL": self.proxy.url}
        self.process: Process | None = None

    def _config(self, interval: float, fall: int, calls_per_second: float) -> dict[str, Any]:
        def site(name: str, target: str, server: SiteProcess, i: int) -> dict[str, Any]:
            path = "all" if self.shared_checks else f"s{i}"
            url = f"http://127.0.0.1:{server.port}/healthz/{path}"
            return {"name": name, "targets": [target], "checks": [{"type": "http", "url": url}]}

        return {
            "state": f"sqlite:///{self.tmp / 'fleet.db'}",
            "reconcile_interval": "60s",
            "log_level": "info",
            "api": (
                {"listen": self.api_url.removeprefix("http://")}
                if self.api_url
                else {"enabled": False}
            ),
            "providers": {"aws": {"type": "route53", "max_calls_per_second": calls_per_second}},
            "services": [
                {
                    "name": f"s{i}",
                    "provider": "aws",
                    "zone": "example.com.",
                    "record": f"s{i}.example.com.",
                    "type": "A",
                    "ttl": 60,
                    "health": {"interval": interval, "timeout": interval / 2, "fall": fall},
                    "failback": {"stabilize": "1h", "steps": [100], "step_duration": "1h"},
                    "sites": [
                        site("primary", PRIMARY, self.primary, i),
                        site("dr", DR, self.dr, i),
                    ],
                }
                for i in range(self.count)
            ],
        }

    def start(self) -> None:
        self.process = Process(
            trafficflip_command("run", "--config", str(self.config)),
            env=self.env,
            log=self.tmp / "fleet.log",
            cwd=ROOT,
        )

    def serving(self) -> dict[str, int]:
        """How many services serve from each site (weight 100), read from moto directly."""
        counts = {"primary": 0, "dr": 0}
        pages = self.route53.get_paginator("list_resource_record_sets")
        for page in pages.paginate(HostedZoneId=self.zone_id):
            for record in page["ResourceRecordSets"]:
                if record.get("Weight") == 100:
                    counts[record["SetIdentifier"]] += 1
        return counts

    def wait_serving(self, site: str, timeout: float) -> float:
        """Seconds until every service serves from ``site``; raises after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.process is not None and self.process.alive(), self.process.output()
            if self.serving()[site] == self.count:
                return time.monotonic() - started
            time.sleep(0.5)  # each look lists the whole zone: leave moto to the service
        raise AssertionError(f"not all on {site} after {timeout}s: {self.serving()}")

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.primary.stop()
        self.dr.stop()
        self.proxy.stop()
