"""The examples in docs/providers/ work: trafficflip configs load, the haproxy.cfg passes
``haproxy -c``, the named.conf passes ``named-checkconf`` with a key made by ``tsig-keygen``."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.named import AVAILABLE as NAMED_AVAILABLE
from tests.named import NAMED
from tests.support import ROOT, Process, free_port, trafficflip_command
from trafficflip.config.loader import load_config

LOOPBACK_DIR, LOOPBACK_PORT = "/tmp/trafficflip-bind", "5300"
PAGES = sorted((ROOT / "docs" / "providers").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[str, str]]:
    return [
        (page.name, match.group(2))
        for page in PAGES
        for match in FENCE.finditer(page.read_text(encoding="utf-8"))
        if match.group(1) == language
    ]


def test_every_provider_has_a_page() -> None:
    assert {p.stem for p in PAGES} == {"route53", "rfc2136", "elbv2", "haproxy", "plugins"}


@pytest.mark.parametrize(
    ("page", "text"), [b for b in blocks("yaml") if "providers:" in b[1]], ids=lambda v: v[:20]
)
def test_every_trafficflip_example_loads(page: str, text: str, tmp_path: Path) -> None:
    # A secret file is read when the configuration is checked: give it one that exists.
    secret = tmp_path / "tsig.secret"
    secret.write_text(base64.b64encode(b"0" * 32).decode() + "\n")
    text = re.sub(r"secret_file: \S+?(?=[,}\s])", f"secret_file: {secret}", text)
    config = load_config(data=yaml.safe_load(text))
    assert config.services, page


def loopback_blocks() -> dict[str, str]:
    """The loopback BIND section of the rfc2136 page, its blocks by language."""
    page = (ROOT / "docs/providers/rfc2136.md").read_text(encoding="utf-8")
    section = page.split("## Trying it on one machine", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for match in FENCE.finditer(section):
        found.setdefault(match.group(1), match.group(2))
    return found


@pytest.mark.skipif(not NAMED_AVAILABLE, reason="needs BIND's named, tsig-keygen (and root)")
def test_the_loopback_bind_example_works_as_pasted(tmp_path: Path) -> None:
    """The shell lines, named.conf, zone file and config of the loopback section, run with
    only the directory and port changed: named serves, check-config --live passes."""
    blocks_by_language = loopback_blocks()
    port = str(free_port())

    def local(text: str) -> str:
        return text.replace(LOOPBACK_DIR, str(tmp_path)).replace(LOOPBACK_PORT, port)

    setup = local(blocks_by_language["sh"])
    subprocess.run(setup, shell=True, check=True, cwd=tmp_path, capture_output=True)
    (tmp_path / "named.conf").write_text(local(blocks_by_language["conf"]))
    (tmp_path / "example.test.zone").write_text(blocks_by_language["zone"])
    (tmp_path / "trafficflip.yaml").write_text(local(blocks_by_language["yaml"]))
    named = Process([NAMED, "-g", "-c", str(tmp_path / "named.conf")], log=tmp_path / "log")
    try:
        result = None
        for _ in range(100):
            result = subprocess.run(
                ["dig", "@127.0.0.1", "-p", port, "www.example.test.", "A", "+short"],
                capture_output=True,
                text=True,
            )
            if result.stdout.strip() == "192.0.2.10":
                break
            time.sleep(0.1)
        assert result is not None and result.stdout.strip() == "192.0.2.10", named.output()
        live = subprocess.run(
            trafficflip_command(
                "check-config", "--live", "--config", str(tmp_path / "trafficflip.yaml")
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert live.returncode == 0, live.stdout + live.stderr
        assert live.stdout.startswith("config OK: 1 service\nlive OK: provider bind")
    finally:
        named.stop()


def test_the_haproxy_example_passes_haproxy_check(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed (make system-packages installs it)")
    [(_, text)] = blocks("haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text.replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock")))
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_named_example_passes_named_checkconf(tmp_path: Path) -> None:
    keygen, checkconf = shutil.which("tsig-keygen"), shutil.which("named-checkconf")
    if keygen is None or checkconf is None:
        pytest.skip("bind9 is not installed (make system-packages installs it)")
    [conf] = [text for _, text in blocks("") if 'zone "example.com"' in text]
    key = subprocess.run([keygen, "-a", "hmac-sha256", "trafficflip."], capture_output=True)
    (tmp_path / "trafficflip.key").write_bytes(key.stdout)
    named_conf = tmp_path / "named.conf"
    named_conf.write_text(
        conf.replace("/etc/bind/trafficflip.key", str(tmp_path / "trafficflip.key"))
    )
    result = subprocess.run([checkconf, str(named_conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The secret-extraction command of step 2 yields the base64 secret trafficflip reads.
    extract = re.search(r"^sed .*$", (ROOT / "docs/providers/rfc2136.md").read_text(), re.M)
    assert extract is not None
    command = (
        extract.group(0)
        .split(" > ")[0]
        .replace("/etc/bind/trafficflip.key", str(tmp_path / "trafficflip.key"))
    )
    secret = subprocess.run(command, shell=True, capture_output=True, text=True).stdout.strip()
    assert secret and secret in key.stdout.decode()
