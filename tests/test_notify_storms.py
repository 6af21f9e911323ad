"""Notification storms, against a real loopback receiver (issue 22 item 13): a burst becomes
one digest per target per second listing the services, a receiver's Retry-After is honoured,
and a full queue drops the least important notices first, counting them."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_engine import Rig, until
from trafficflip.config.schema import NotifyTarget
from trafficflip.operations import notify
from trafficflip.operations.notify import Notice, Notifier, retry_after

SERVICES = 500
# The receiver's threads answer within this long whatever the test does.
HOLD_LIMIT = 20.0


class Receiver:
    """Records (monotonic time, JSON body) of every POST. ``answers`` is consumed one per
    request: a status and a Retry-After value; when empty, 200. ``hold`` makes requests wait
    (at most HOLD_LIMIT) until it is set."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, dict[str, Any]]] = []
        self.answers: list[tuple[int, str | None]] = []
        self.hold = threading.Event()
        self.hold.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.hold.wait(HOLD_LIMIT)
                receiver.posts.append((time.monotonic(), body))
                status, after = receiver.answers.pop(0) if receiver.answers else (200, None)
                self.send_response(status)
                if after is not None:
                    self.send_header("Retry-After", after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def notices(self) -> list[dict[str, Any]]:
        """Every notice received, digests unpacked."""
        found = []
        for _, body in self.posts:
            found += body["data"]["notices"] if body["event"] == "digest" else [body]
        return found

    def stop(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def notices(kind: str, count: int) -> list[Notice]:
    return [Notice(kind, f"{kind} svc{i:03d}", time.time(), f"svc{i:03d}") for i in range(count)]


async def test_a_mass_failover_is_a_few_digests_listing_every_service(
    receiver: Receiver,
) -> None:
    """500 failovers over 2.5 s (25 ticks of 20 services, as checks fail at slightly
    different times): at most one POST a second, every service listed."""
    counted: list[tuple[str, str]] = []
    target = NotifyTarget(url=receiver.url(), name="ops")  # type: ignore[arg-type]
    notifier = Notifier([target], Rig().engine, counted=lambda *c: counted.append(c))
    await notifier.start()
    burst = notices("failover", SERVICES)
    try:
        started = time.monotonic()
        for tick in range(0, SERVICES, 20):
            for notice in burst[tick : tick + 20]:
                notifier.notify(notice)
            await asyncio.sleep(0.1)
        spread = time.monotonic() - started
        await until(lambda: len(receiver.notices()) == SERVICES, timeout=20)
        elapsed = time.monotonic() - started
    finally:
        await notifier.stop()
    posts = [at for at, _ in receiver.posts]
    assert len(posts) <= spread / notify.DIGEST_INTERVAL + 2, (len(posts), spread)
    gaps = [b - a for a, b in zip(posts, posts[1:], strict=False)]
    assert all(gap >= notify.DIGEST_INTERVAL * 0.9 for gap in gaps), gaps
    assert {n["service"] for n in receiver.notices()} == {n.service for n in burst}
    digests = [body for _, body in receiver.posts if body["event"] == "digest"]
    assert digests and all(d["message"].endswith(" services") for d in digests), digests[0]
    assert counted.count(("ops", "sent")) == SERVICES
    print(f"{SERVICES} notices over {spread:.1f}s: {len(posts)} POSTs, done in {elapsed:.1f}s")


async def test_retry_after_is_honoured(receiver: Receiver) -> None:
    wait = 2
    receiver.answers = [(429, str(wait)), (503, str(wait))]
    target = NotifyTarget(url=receiver.url(), retries=3)  # type: ignore[arg-type]
    notifier = Notifier([target], Rig().engine)
    await notifier.start()
    try:
        notifier.notify(Notice("failover", "primary down -> dr", time.time(), "www"))
        await until(lambda: len(receiver.posts) == 3, timeout=15)
        for notice in notices("recovered", 50):  # arrives while the target is held
            notifier.notify(notice)
        # The failover was POSTed three times (two refusals); then the 50.
        await until(lambda: len(receiver.notices()) == 3 + 50, timeout=15)
    finally:
        await notifier.stop()
    posts = [at for at, _ in receiver.posts]
    assert posts[1] - posts[0] >= wait - 0.1 and posts[2] - posts[1] >= wait - 0.1, posts
    assert len(posts) <= 5, len(posts)  # the 50 went out as one or two digests


async def test_a_full_queue_drops_the_least_important_first(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[str, str]] = []
    target = NotifyTarget(url=receiver.url(), name="ops", events=["ramp_step", "recovered"])  # type: ignore[arg-type]
    notifier = Notifier([target], Rig().engine, counted=lambda *c: counted.append(c))
    await notifier.start()
    receiver.hold.clear()  # the first POST hangs: everything after it queues
    try:
        notifier.notify(Notice("ramp_step", "first", time.time(), "first"))
        await until(lambda: len(notifier._queues["ops"]) == 0)
        for notice in notices("ramp_step", notify.QUEUE_SIZE):
            notifier.notify(notice)
        for notice in notices("recovered", SERVICES):  # the ones that matter, last
            notifier.notify(notice)
        assert counted.count(("ops", "dropped")) == SERVICES
        receiver.hold.set()
        await until(lambda: len(receiver.notices()) == 1 + notify.QUEUE_SIZE, timeout=30)
    finally:
        await notifier.stop()
    kinds = [n["event"] for n in receiver.notices()]
    assert kinds.count("recovered") == SERVICES, kinds.count("recovered")
    assert kinds.count("ramp_step") == 1 + notify.QUEUE_SIZE - SERVICES


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30", 30.0), ("0", 0.0), ("99999", notify.RETRY_AFTER_CAP), ("soon", None), (None, None)],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, time.time()) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 20))
    found = retry_after(value, now)
    assert found is not None and 18 <= found <= 21
