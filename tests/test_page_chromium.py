"""The status page in real headless Chromium, from a running service after a failover."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.service import PRIMARY, STANDBY, Service
from tests.support import MotoServer, wait_until

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it as root)"
)
# The screenshot is kept here for a person to look at (and by CI as an artifact).
SCREENSHOT = Path(__file__).resolve().parent.parent / "build" / "status-page.png"
WINDOW = {"site": "primary", "every": "0 3 * * sun", "duration": "1h"}


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Dom(html.parser.HTMLParser):
    """The dumped DOM's elements with their attributes, and its visible text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.text.append(data.strip())

    def classes(self, name: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if name in (a.get("class") or "").split()]


@pytest.fixture
def failed_over(tmp_path: Path, moto_server: MotoServer) -> Iterator[Service]:
    service = Service(tmp_path, moto_server)
    data = yaml.safe_load(service.config.read_text())
    data["services"][0]["maintenance"] = [WINDOW]
    service.config.write_text(yaml.safe_dump(data))
    service.start()
    wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")
    service.primary.stop()
    wait_until(lambda: service.weights() == STANDBY, timeout=5, what="failover")
    yield service
    service.close()


def test_page_shows_the_failover(tmp_path: Path, failed_over: Service) -> None:
    # Opened, the service fetches its journal: virtual time lets that request finish.
    url = failed_over.url + "/?open=www"
    dom = Dom(chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", url))
    text = " ".join(dom.text)
    assert "www" in text
    assert [a.get("class") for a in dom.classes("phase")] == ["phase bad"]
    assert "failed over" in text
    rows = [a.get("data-site") for tag, a in dom.elements if tag == "tr"]
    assert rows == ["primary", "dr"]
    dots = [a.get("class") for a in dom.classes("dot")]
    assert dots == ["dot down", "dot up"]
    assert "0%" in text and "100%" in text
    assert "primary down: http" in text and "connect refused" in text  # what it waits for
    assert "maintenance: window primary" in text and "(every 0 3 * * sun)" in text
    # The only service has a card; with no filter typed, nothing was filtered out.
    assert "no other services" in dom.text and "no other services match the filter" not in text
    journal = [e for e in dom.text if e in ("failover", "initial")]
    assert journal[:2] == ["failover", "initial"], journal  # the journal, newest first
    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1100,520", failed_over.url + "/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)


def test_page_refreshes_itself_and_loads_nothing_external(
    tmp_path: Path, failed_over: Service
) -> None:
    # Virtual time runs the refresh timer; it waits while a fetch is in flight.
    dom = Dom(
        chromium(
            tmp_path, "--virtual-time-budget=3000", "--dump-dom", failed_over.url + "/?refresh=0.5"
        )
    )
    body = next(a for tag, a in dom.elements if tag == "body")
    assert int(body.get("data-refreshes") or 0) >= 1, body
    response = failed_over.get("/")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = Dom(response.text)
    for _, attrs in page.elements:
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith(("http:", "https:", "//")), attrs
