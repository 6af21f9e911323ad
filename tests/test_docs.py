"""The examples in docs/providers/ work: trafficflip configs load, the haproxy.cfg passes
``haproxy -c``, the named.conf passes ``named-checkconf`` with a key made by ``tsig-keygen``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT
from trafficflip.config.loader import load_config

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
def test_every_trafficflip_example_loads(page: str, text: str) -> None:
    config = load_config(data=yaml.safe_load(text))
    assert config.services, page


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
