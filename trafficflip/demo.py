"""``trafficflip demo``: the real service against an in-process Route53 emulation (moto's
server, over HTTP on loopback) and two HTTP sites on loopback. It breaks the primary, shows
the failover, restores it, shows the failback step by step, prints the journal and exits."""

from __future__ import annotations

import asyncio
import http.server
import os
import sys
import tempfile
import threading
import time
from typing import Any

import boto3

from trafficflip.config.loader import Config, load_config
from trafficflip.logs import setup_logging
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import Runner
from trafficflip.runtime.state import open_store

ZONE = "demo.example."
BAR = 30
PHASE_TIMEOUT = 30.0


class DemoSite:
    """A loopback HTTP site whose health page can be broken and repaired."""

    def __init__(self) -> None:
        self.healthy = True
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body = (200, b"ok") if site.healthy else (503, b"down")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def demo_config(primary: DemoSite, dr: DemoSite, state_path: str) -> Config:
    site_checks = [("primary", "192.0.2.10", primary), ("dr", "198.51.100.20", dr)]
    return load_config(
        data={
            "state": f"sqlite:///{state_path}",
            "reconcile_interval": "5s",
            "providers": {"aws": {"type": "route53"}},
            "services": [
                {
                    "name": "www",
                    "provider": "aws",
                    "zone": ZONE,
                    "record": f"www.{ZONE}",
                    "type": "A",
                    "ttl": 1,
                    "health": {"interval": "250ms", "timeout": "200ms", "fall": 2, "rise": 2},
                    "failback": {
                        "stabilize": "2s",
                        "steps": [10, 25, 50, 100],
                        "step_duration": "2s",
                    },
                    "sites": [
                        {
                            "name": name,
                            "targets": [address],
                            "checks": [{"type": "http", "url": site.url, "body": "ok"}],
                        }
                        for name, address, site in site_checks
                    ],
                }
            ],
        }
    )


class View:
    """Prints a line each time the weights Route53 really holds change."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started = time.monotonic()
        self.last: dict[str, int] = {}

    async def weights(self) -> dict[str, int]:
        provider = self.engine.providers["aws"]
        answers = await provider.read([self.engine.services["www"].config])
        return {a.site: a.weight or 0 for a in answers.get("www", ()) if a.site}

    async def refresh(self) -> dict[str, int]:
        weights = await self.weights()
        if weights != self.last:
            self.last = weights
            elapsed = time.monotonic() - self.started
            bars = "  ".join(
                f"{site:<8}{'#' * (BAR * w // 100):<{BAR}} {w:>3}%"
                for site, w in sorted(weights.items(), key=lambda kv: kv[0] != "primary")
            )
            print(f"  [{elapsed:5.1f}s] route53 www.{ZONE}  {bars}", flush=True)
        return weights

    async def until(self, want: dict[str, int], what: str) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT
        while await self.refresh() != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo: timed out waiting for {what}")
            await asyncio.sleep(0.1)


async def script(engine: Engine, runner: Runner, primary: DemoSite) -> None:
    view = View(engine)
    try:
        print("1. both sites healthy: waiting for the first decision", flush=True)
        await view.until({"primary": 100, "dr": 0}, "the first decision")
        print("2. breaking the primary (its health page now answers 503)", flush=True)
        primary.healthy = False
        await view.until({"primary": 0, "dr": 100}, "the failover")
        print(
            "3. repairing the primary: stabilize 2s, then steps 10/25/50/100 every 2s", flush=True
        )
        primary.healthy = True
        await view.until({"primary": 100, "dr": 0}, "the failback")
    finally:
        runner.stop()


async def _run(config: Config, primary: DemoSite) -> None:
    store = open_store(config.settings.state)
    engine = Engine(
        config.services,
        store,
        {name: spec.cls.create(name, spec.config) for name, spec in config.providers.items()},
    )
    runner = Runner(engine, Prober(), reconcile_interval=config.settings.reconcile_interval)
    await asyncio.gather(runner.run(), script(engine, runner, primary))
    print("\njournal:")
    for entry in store.journal("www", limit=50):
        print(
            f"  {time.strftime('%H:%M:%S', time.localtime(entry.at))} {entry.kind}: {entry.message}"
        )
    store.close()


def local_route53(zone: str) -> Any:
    """Start moto's server on a loopback port, point this process's AWS clients at it and
    create ``zone``. Returns the server (``stop()`` it); moto is only a test dependency."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    boto3.client("route53").create_hosted_zone(Name=zone, CallerReference=str(time.time()))
    return moto


def run_demo() -> int:
    setup_logging("INFO")  # before moto starts: its access log is held at WARNING
    moto = local_route53(ZONE)
    host, port = moto.get_host_and_port()
    primary, dr = DemoSite(), DemoSite()
    print(
        f"trafficflip demo: Route53 emulation at {host}:{port}, sites primary={primary.url} "
        f"dr={dr.url}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        config = demo_config(primary, dr, os.path.join(folder, "state.db"))
        try:
            asyncio.run(_run(config, primary))
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            primary.close()
            dr.close()
            moto.stop()
    return 0
