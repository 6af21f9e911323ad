"""The status page at 500 services in headless Chromium: load time, the summary after a
mass failover, what comes first, the filter, and an opened service with its timeline.
Screenshots (1,280 px wide) go to build/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MotoServer, wait_until
from tests.test_api_load import SERVICES, Fleet
from tests.test_page_chromium import CHROMIUM, Dom, chromium

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it as root)"
)
BUILD = Path(__file__).resolve().parent.parent / "build"


@pytest.fixture(scope="module")
def failed_over(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """499 services failed over (their shared primary died); www still normal."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    moto = MotoServer(tmp_path / "moto.log")
    fleet = Fleet(tmp_path, moto)
    try:
        fleet.start()
        wait_until(fleet.answering, timeout=60, what="the API")
        summary = lambda: fleet.get("/api/v1/summary").json()["phases"]  # noqa: E731
        wait_until(lambda: summary()["normal"] == SERVICES, timeout=120, what="all normal")
        fleet.others[0].stop()
        wait_until(lambda: summary()["failed over"] == SERVICES - 1, timeout=60, what="failed over")
        yield fleet
    finally:
        fleet.close()
        moto.stop()


def page(tmp_path: Path, fleet: Fleet, query: str = "", shot: str = "") -> Dom:
    url = f"{fleet.url}/?refresh=60{query}"
    started = time.monotonic()
    dom = Dom(chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", url))
    print(f"chromium --dump-dom {query or '(all)'}: {time.monotonic() - started:.2f}s")
    if shot:
        path = tmp_path / shot
        chromium(tmp_path, f"--screenshot={path}", "--window-size=1280,1600", url)
        BUILD.mkdir(exist_ok=True)
        shutil.copyfile(path, BUILD / shot)
    return dom


def body(dom: Dom) -> dict[str, str | None]:
    return next(a for tag, a in dom.elements if tag == "body")


def test_summary_counts_and_trouble_first(tmp_path: Path, failed_over: Fleet) -> None:
    dom = page(tmp_path, failed_over, shot="status-500-failed-over.png")
    counts = {a["data-phase"]: a["data-count"] for a in dom.classes("count") if a.get("data-phase")}
    assert counts["failed over"] == str(SERVICES - 1) and counts["normal"] == "1", counts
    assert counts["checks down"] == "1"
    load_ms = int(body(dom)["data-load-ms"] or 0)
    print(f"page load to first picture at {SERVICES} services: {load_ms} ms")
    # A mass failover folds into one-line rows, the services in trouble first (config order
    # within a phase), the normal one last.
    rows = [(a["data-service"], a["data-phase"]) for a in dom.classes("row")]
    assert len(rows) == SERVICES and rows[-1] == ("www", "normal"), rows[-3:]
    assert rows[0] == ("svc001", "failed over")
    assert {phase for _, phase in rows[:-1]} == {"failed over"}
    assert "primary down" in " ".join(dom.text)


def test_filter_matches_names_and_phases(tmp_path: Path, failed_over: Fleet) -> None:
    by_name = page(tmp_path, failed_over, "&filter=svc01", shot="status-500-filter.png")
    assert body(by_name)["data-shown"] == "10"  # svc010 .. svc019
    by_phase = page(tmp_path, failed_over, "&filter=normal")
    assert body(by_phase)["data-shown"] == "1"
    assert [a["data-service"] for a in by_phase.classes("row")] == ["www"]
    # Ten services in trouble are few enough for cards.
    cards = [a for _, a in by_name.elements if "service" in (a.get("class") or "").split()]
    assert len(cards) == 10


def test_an_opened_service_shows_detail_and_timeline(tmp_path: Path, failed_over: Fleet) -> None:
    dom = page(tmp_path, failed_over, "&filter=svc002&open=svc002", shot="status-500-detail.png")
    text = " ".join(dom.text)
    assert "last hour" in text and "failover" in text  # the journal, loaded on opening
    marks = [a for a in dom.classes("mark-failover")]
    assert marks, "the failover is marked on the share timeline"
    rects = [a for tag, a in dom.elements if tag == "rect"]
    assert len(rects) >= 2  # primary's share before, dr's after
