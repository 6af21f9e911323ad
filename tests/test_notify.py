"""Webhook notifications: payloads from a running service, retries, failures, never blocking."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from tests.service import PRIMARY, STANDBY, Receiver, Service
from tests.support import MotoServer, wait_until
from tests.test_engine import Rig, until
from trafficflip.config.loader import format_validation_error
from trafficflip.config.schema import NotifyTarget
from trafficflip.errors import PermanentProviderError
from trafficflip.operations.notify import Notice, Notifier, payload


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def test_payloads_from_a_running_service(tmp_path: Path, moto_server: MotoServer) -> None:
    service = Service(tmp_path, moto_server, steps=[25, 50, 100])
    try:
        service.start()
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")
        service.primary.stop()
        wait_until(lambda: service.weights() == STANDBY, timeout=5, what="failover")
        failover = wait_until(
            lambda: [b for b in service.receiver.bodies if b.get("event") == "failover"],
            timeout=5,
            what="the failover notice",
        )[0]
        assert failover["service"] == "www" and failover["source"] == "trafficflip"
        # The line names the failing check, not only the reason.
        check = f"http {service.primary.url}"
        assert failover["message"] == f"primary down ({check} connect refused x2) -> dr"
        assert failover["data"]["shares"] == STANDBY and failover["time"].endswith("Z")
        service.primary.start()
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="failback")
        wanted = ["failover", "failback_started", "ramp_step", "failback_completed"]
        wait_until(
            lambda: [e for e in service.receiver.events() if e in wanted] == wanted,
            timeout=5,
            what=f"notices {wanted}, got {service.receiver.events()}",
        )
        slack = [b for b in service.receiver.bodies if b["_path"] == "/slack"]
        assert set(slack[0]) == {"text", "_path", "_auth"}
        texts = [b["text"] for b in slack]
        assert ":rotating_light: trafficflip *www* failover: primary down" in texts[0], texts
        assert any(
            t.startswith(":white_check_mark: trafficflip *www* failback_completed") for t in texts
        )
    finally:
        service.close()


def target(receiver: Receiver, **options: Any) -> NotifyTarget:
    return NotifyTarget(url=receiver.url("/json"), **options)  # type: ignore[arg-type]


async def test_retries_then_counts_a_failure(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig()
    counted: list[tuple[str, str]] = []
    notifier = Notifier(
        [target(receiver, retries=2)], rig.engine, counted=lambda *c: counted.append(c)
    )
    await notifier.start()
    receiver.status = 500
    notifier.notify(Notice("failover", "primary down -> dr", time.time(), "www"))
    await until(lambda: bool(counted))
    assert counted == [("webhook", "failed")] and len(receiver.bodies) == 3
    assert "notify_failed target=webhook event=failover service=www attempts=3" in caplog.text
    assert receiver.url("/json") not in caplog.text  # the URL may be a credential
    receiver.status = 404  # not retried: it will not change
    notifier.notify(Notice("all_down", "every site is down", time.time(), "www"))
    await until(lambda: len(counted) == 2)
    assert len(receiver.bodies) == 4
    receiver.status = 200
    notifier.notify(Notice("recovered", "serving again", time.time(), "www"))
    await until(lambda: len(counted) == 3)
    assert counted[-1] == ("webhook", "sent")
    await notifier.stop()


async def test_a_hanging_webhook_never_delays_a_traffic_change() -> None:
    hang = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            hang.wait(10)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rig = Rig()
    counted: list[tuple[str, str]] = []
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    slow = NotifyTarget(url=url, timeout=30, retries=0)  # type: ignore[arg-type]
    notifier = Notifier([slow], rig.engine, counted=lambda *c: counted.append(c))
    await notifier.start()
    try:
        rig.probe("primary", True), rig.probe("dr", True)
        await rig.settle()
        rig.probe("primary", False)
        await rig.settle()
        # The failover is applied while the webhook about it is still hanging.
        assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
        assert counted == []
        hang.set()
        await until(lambda: ("webhook", "sent") in counted)
    finally:
        hang.set()
        await notifier.stop()
        server.shutdown()
        server.server_close()


async def test_provider_errors_are_announced_once_per_outage(receiver: Receiver) -> None:
    rig = Rig()
    notifier = Notifier(
        [target(receiver, events=["provider_error", "provider_recovered"])], rig.engine
    )
    await notifier.start()
    rig.provider.fail = lambda: PermanentProviderError("access denied", kind="AccessDenied")
    rig.probe("primary", True), rig.probe("dr", True)
    for _ in range(3):
        await rig.engine.reconcile()
    rig.provider.fail = None
    await rig.engine.reconcile()
    await until(lambda: len(receiver.bodies) == 2)
    await asyncio.sleep(0)  # nothing else is queued
    assert [b["event"] for b in receiver.bodies] == ["provider_error", "provider_recovered"]
    assert receiver.bodies[0]["message"] == "provider mem failed (AccessDenied): access denied"
    assert receiver.bodies[0]["service"] is None and receiver.bodies[0]["data"] == {
        "provider": "mem"
    }
    await notifier.stop()


def test_headers_are_sent_and_slack_format() -> None:
    notice = Notice("failback_started", "dr -> primary (failback): step 1/2: 50%", 0.0, "www")
    slack = NotifyTarget(url="https://hooks.example/x", format="slack")  # type: ignore[arg-type]
    assert payload(slack, notice) == {
        "text": ":information_source: trafficflip *www* failback_started: "
        "dr -> primary (failback): step 1/2: 50%"
    }
    generic = payload(NotifyTarget(url="https://hooks.example/x"), notice)  # type: ignore[arg-type]
    assert generic["time"] == "1970-01-01T00:00:00Z" and generic["event"] == "failback_started"


async def test_custom_headers_reach_the_receiver(receiver: Receiver) -> None:
    rig = Rig()
    auth = {"Authorization": "Bearer hook-secret"}
    notifier = Notifier([target(receiver, headers=auth)], rig.engine)
    await notifier.start()
    notifier.notify(Notice("failover", "x", 0.0, "www"))
    await until(lambda: bool(receiver.bodies))
    assert receiver.bodies[0]["_auth"] == "Bearer hook-secret"
    await notifier.stop()


def test_a_header_value_with_a_newline_is_stripped_or_rejected() -> None:
    target = NotifyTarget(
        url="https://hooks.example/x",  # type: ignore[arg-type]
        headers={"Authorization": "Bearer hook-secret\n"},  # type: ignore[dict-item]
    )
    assert target.headers["Authorization"].get_secret_value() == "Bearer hook-secret"
    with pytest.raises(ValidationError) as raised:
        NotifyTarget(
            url="https://hooks.example/x",  # type: ignore[arg-type]
            headers={"Authorization": "Bearer hook\nsecret"},  # type: ignore[dict-item]
        )
    problems = format_validation_error(raised.value, "notify[0]")
    assert problems == [
        "notify[0].headers: header 'Authorization': the value holds a control character"
    ]


async def test_a_header_value_is_never_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A header h11 refuses (built past the config's check) fails without quoting it."""
    rig = Rig()
    counted: list[tuple[str, str]] = []
    bad = {"X-Token": SecretStr("hook-secret\n")}
    hook = target(receiver, retries=1).model_copy(update={"headers": bad})
    notifier = Notifier([hook], rig.engine, counted=lambda *c: counted.append(c))
    await notifier.start()
    notifier.notify(Notice("failover", "x", 0.0, "www"))
    await until(lambda: bool(counted))
    await notifier.stop()
    assert counted == [("webhook", "failed")]
    assert "notify_failed target=webhook event=failover" in caplog.text
    assert "hook-secret" not in caplog.text
