"""The compose example (config/compose.yaml) under podman-compose: named and trafficflip
start together, and a failover reaches ``dig``.

It runs a loopback variant of the file, made here from the file itself, because this host
has no registry and allows only loopback traffic: both services on the host's network
(`network_mode: host`) instead of the 172.28.0.0/24 bridge, named listening on a free
loopback port, the API on another, BIND's image replaced by a Debian stand-in
(container/bind-standin.Dockerfile), trafficflip's `build:` by the image `make image` builds,
and the two sites by loopback HTTP servers. Everything else is the example's own: the
named entrypoint that writes the TSIG key from the environment, named.conf's zone and
update-policy, the zone file, the volumes, the secrets file, and the environment overrides.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.containers import CONTAINER_DIR, base_image, build_image, engine_problem, podman
from tests.support import ROOT, HttpSite, free_port, wait_until

COMPOSE = ROOT / "config" / "compose.yaml"
BIND_IMAGE = "localhost/trafficflip-bind:test"
PODMAN_COMPOSE = Path(sys.executable).with_name("podman-compose")
PRIMARY, DR = "192.0.2.10", "198.51.100.20"  # the example's targets (config/bind.yaml)


def problem() -> str | None:
    if engine_problem() is not None:
        return engine_problem()
    if not PODMAN_COMPOSE.exists():
        return "podman-compose is not installed (pip install -e '.[test]' installs it)"
    if shutil.which("dig") is None:
        return "dig is not installed (make system-packages installs bind9-dnsutils as root)"
    return None


pytestmark = pytest.mark.skipif(problem() is not None, reason=problem() or "")


def build_bind_standin() -> str:
    build = podman(
        "build", "--network", "host", "--build-arg", f"BASE={base_image()}",
        "-t", BIND_IMAGE, "-f", str(CONTAINER_DIR / "bind-standin.Dockerfile"),
        str(CONTAINER_DIR),
        timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    return BIND_IMAGE


class ComposeProject:
    """The loopback variant of the compose example, up under a project name of its own."""

    def __init__(self, tmp_path: Path, primary: HttpSite, dr: HttpSite) -> None:
        self.tmp_path = tmp_path
        self.name = f"tftest{uuid.uuid4().hex[:8]}"
        self.dns_port, self.api_port = free_port(), free_port()
        self.file = tmp_path / "compose.yaml"
        self.file.write_text(yaml.safe_dump(self.variant(primary, dr)))
        # The TSIG secret exists only in the environment of podman-compose, as in the example.
        self.env = {"TSIG_SECRET": base64.b64encode(os.urandom(32)).decode()}

    def variant(self, primary: HttpSite, dr: HttpSite) -> dict[str, Any]:
        compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
        del compose["networks"]
        services = compose["services"]
        for service in services.values():
            del service["networks"], service["ports"]
            service["network_mode"] = "host"
            service["restart"] = "no"
        services["bind"]["image"] = BIND_IMAGE
        del services["trafficflip"]["build"]
        services["trafficflip"]["image"] = build_image()
        services["trafficflip"]["environment"].update(
            TRAFFICFLIP_PROVIDERS__BIND__SERVER=f"127.0.0.1:{self.dns_port}",
            TRAFFICFLIP_API__LISTEN=f"127.0.0.1:{self.api_port}",
            TRAFFICFLIP_LOG_FORMAT="text",
        )
        sources = {
            "./compose/named.conf": self.named_conf(),
            "./compose/example.com.zone": ROOT / "config" / "compose" / "example.com.zone",
            "./bind.yaml": self.config(primary, dr),
        }
        for service in services.values():
            service["volumes"] = [self.rebase(v, sources) for v in service["volumes"]]
        tokens = self.tmp_path / "api-tokens"
        tokens.write_text("ops:tf-compose-test-token-0123456789\n")
        tokens.chmod(0o644)  # read by the image's user through the secret's bind mount
        compose["secrets"]["api_tokens"]["file"] = str(tokens)
        return compose

    @staticmethod
    def rebase(volume: str, sources: dict[str, Path]) -> str:
        source, _, rest = volume.partition(":")
        return f"{sources[source]}:{rest}" if source in sources else volume

    def named_conf(self) -> Path:
        text = (ROOT / "config" / "compose" / "named.conf").read_text()
        loopback = text.replace(
            "listen-on { any; };", f"listen-on port {self.dns_port} {{ 127.0.0.1; }};"
        )
        assert loopback != text, "named.conf's listen-on changed: update this test"
        # Debian's bind9 ships rndc.key, so named would open its control channel on the
        # host's 127.0.0.1:953, which another named on this host may hold.
        loopback += "controls { };\n"
        path = self.tmp_path / "named.conf"
        path.write_text(loopback)
        return path

    def config(self, primary: HttpSite, dr: HttpSite) -> Path:
        config: dict[str, Any] = yaml.safe_load((ROOT / "config" / "bind.yaml").read_text())
        (service,) = config["services"]
        service["health"] = {"interval": 0.2, "timeout": 0.15, "fall": 2, "rise": 2}
        service["ttl"] = 1
        service["failback"].update(stabilize="1s", step_duration="1s")
        for site, server in zip(service["sites"], (primary, dr), strict=True):
            site["checks"] = [{"type": "http", "url": server.url}]
        path = self.tmp_path / "trafficflip.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o644)
        return path

    def compose(self, *args: str, timeout: float = 180) -> Any:
        return subprocess.run(
            [str(PODMAN_COMPOSE), "-p", self.name, "-f", str(self.file), *args],
            env={**os.environ, "CONTAINERS_CONF": str(CONTAINER_DIR / "containers.conf"),
                 **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip

    def answers(self) -> set[str]:
        dig = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.dns_port), "+short", "+norec", "+time=1",
             "+tries=1", "www.example.com", "A"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return set(dig.stdout.split()) if dig.returncode == 0 else set()

    def logs(self) -> str:
        logs = [podman("logs", f"{self.name}_{service}_1") for service in ("bind", "trafficflip")]
        return "".join(result.stdout[-3000:] + result.stderr[-3000:] for result in logs)


@pytest.fixture
def sites() -> Iterator[tuple[HttpSite, HttpSite]]:
    primary, dr = HttpSite().start(), HttpSite().start()
    yield primary, dr
    primary.stop()
    dr.stop()


@pytest.fixture
def project(tmp_path: Path, sites: tuple[HttpSite, HttpSite]) -> Iterator[ComposeProject]:
    build_bind_standin()
    project = ComposeProject(tmp_path, *sites)
    try:
        yield project
    finally:
        (tmp_path / "containers.log").write_text(project.logs())
        project.compose("down", "--volumes", "--timeout", "10")


def test_named_and_trafficflip_start_together_and_a_failover_reaches_dig(
    project: ComposeProject, sites: tuple[HttpSite, HttpSite]
) -> None:
    up = project.compose("up", "-d")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    wait_until(lambda: project.answers() == {PRIMARY}, timeout=60, what=f"{PRIMARY} in dig")
    sites[0].stop()
    wait_until(lambda: project.answers() == {DR}, timeout=15, what=f"failover to {DR} in dig")
