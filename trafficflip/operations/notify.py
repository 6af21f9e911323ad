"""Webhook notifications (generic JSON or Slack-compatible), sent in the background.

The engine only queues: a notice is put on each target's bounded queue and a worker per
target sends it with retries and a timeout, so a slow or dead webhook never delays a traffic
change. A notice that fails every attempt is logged and counted; a full queue drops and
counts. Target URLs and headers are secrets (a Slack webhook URL is its own credential):
logs name the target, never its URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from trafficflip.config.schema import NotifyTarget
from trafficflip.decision.model import EventKind, JournalEntry
from trafficflip.runtime.engine import Engine, EngineListener
from trafficflip.runtime.retry import backoff_delay

log = logging.getLogger("trafficflip.operations.notify")
QUEUE_SIZE = 1000
# On stop, queued notices get this long to go out (the last failover before a restart).
DRAIN_GRACE = 3.0
RETRY_BASE, RETRY_CAP = 0.5, 10.0
# The most of a receiver's answer read; the rest is dropped with the connection.
BODY_LIMIT = 64 * 1024
# provider_error notices come from the provider's transitions, not from its journal
# entries (one per service per retry), so a provider outage is announced once.
JOURNAL_ONLY_SKIPPED = {EventKind.PROVIDER_ERROR}
ICONS: dict[str, str] = {
    EventKind.FAILOVER: ":rotating_light:",
    EventKind.ALL_DOWN: ":fire:",
    EventKind.PROVIDER_ERROR: ":warning:",
    EventKind.FAILBACK_ABORTED: ":warning:",
    EventKind.FAILBACK_COMPLETED: ":white_check_mark:",
    EventKind.RECOVERED: ":white_check_mark:",
    EventKind.PROVIDER_RECOVERED: ":white_check_mark:",
    EventKind.PLANNED_MOVE_STARTED: ":construction:",
    EventKind.DRAIN_STARTED: ":construction:",
}


@dataclass(frozen=True)
class Notice:
    """One thing to tell: an event ``EventKind`` (as its string) and its one-line message."""

    event: str
    message: str
    at: float
    service: str | None = None
    data: dict[str, object] = field(default_factory=dict)


def payload(target: NotifyTarget, notice: Notice) -> dict[str, Any]:
    """The JSON body for ``target``'s format."""
    if target.format == "slack":
        icon = ICONS.get(notice.event, ":information_source:")
        subject = f"*{notice.service}* " if notice.service else ""
        return {"text": f"{icon} trafficflip {subject}{notice.event}: {notice.message}"}
    return {
        "source": "trafficflip",
        "event": notice.event,
        "service": notice.service,
        "message": notice.message,
        "at": notice.at,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(notice.at)),
        "data": notice.data,
    }


class Notifier(EngineListener):
    """Queues notices from the engine and sends them; a component of the ``Runner``."""

    def __init__(
        self,
        targets: Sequence[NotifyTarget],
        engine: Engine,
        *,
        counted: Callable[[str, str], None] = lambda target, outcome: None,
    ) -> None:
        self.targets = list(targets)
        self.counted = counted
        self.clock = engine.clock.wall
        self._queues: dict[str, asyncio.Queue[Notice]] = {
            t.name: asyncio.Queue(maxsize=QUEUE_SIZE) for t in self.targets
        }
        self._failing: set[str] = set()
        self._client: httpx.AsyncClient | None = None
        self._workers: list[asyncio.Task[None]] = []
        engine.listeners.append(self)

    # -- EngineListener ---------------------------------------------------------------------

    def journaled(self, entries: Sequence[JournalEntry]) -> None:
        for entry in entries:
            if entry.kind not in JOURNAL_ONLY_SKIPPED:
                self.notify(Notice(entry.kind, entry.message, entry.at, entry.service, entry.data))

    def provider_synced(
        self, provider: str, error: Exception | None, apply_seconds: float | None
    ) -> None:
        data: dict[str, object] = {"provider": provider}
        if error is not None and provider not in self._failing:
            self._failing.add(provider)
            kind = str(getattr(error, "kind", "") or type(error).__name__)
            message = f"provider {provider} failed ({kind}): {error}"
            self.notify(Notice(EventKind.PROVIDER_ERROR, message, self.clock(), data=data))
        elif error is None and provider in self._failing:
            self._failing.discard(provider)
            message = f"provider {provider} answers again"
            self.notify(Notice(EventKind.PROVIDER_RECOVERED, message, self.clock(), data=data))

    # -- queueing and sending ---------------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        """Queue ``notice`` for every target that wants it; never waits."""
        for target in self.targets:
            if notice.event not in target.events:
                continue
            try:
                self._queues[target.name].put_nowait(notice)
            except asyncio.QueueFull:
                self.counted(target.name, "dropped")
                log.warning(
                    "notify_dropped target=%s event=%s: queue full", target.name, notice.event
                )

    async def start(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(t)) for t in self.targets]

    async def stop(self) -> None:
        """Give queued notices ``DRAIN_GRACE`` to go out, then stop the workers."""
        pending = [q.join() for q in self._queues.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*pending), DRAIN_GRACE)
        except TimeoutError:
            log.warning("notify_unsent: stopping with notices still queued")
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _work(self, target: NotifyTarget) -> None:
        queue = self._queues[target.name]
        while True:
            notice = await queue.get()
            try:
                await self._deliver(target, notice)
            except Exception as exc:  # a worker must outlive any one notice
                # No traceback: its lines could quote the URL or a header value (secrets).
                log.error(
                    "notify_error target=%s event=%s error=%s",
                    target.name,
                    notice.event,
                    f"{type(exc).__name__}: {_redacted(str(exc), target)}",
                )
            finally:
                queue.task_done()

    async def _deliver(self, target: NotifyTarget, notice: Notice) -> None:
        error = ""
        for attempt in range(target.retries + 1):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt, base=RETRY_BASE, cap=RETRY_CAP))
            error, retry = await self._post(target, notice)
            if not error:
                self.counted(target.name, "sent")
                log.debug("notify_sent target=%s event=%s", target.name, notice.event)
                return
            if not retry:
                break
        self.counted(target.name, "failed")
        log.warning(
            "notify_failed target=%s event=%s service=%s attempts=%d error=%s",
            target.name,
            notice.event,
            notice.service or "-",
            attempt + 1,
            error,
        )

    async def _post(self, target: NotifyTarget, notice: Notice) -> tuple[str, bool]:
        """One attempt, bounded as a whole by ``target.timeout``: ('', _) when delivered,
        else the error and whether to retry."""
        url = target.url.get_secret_value()
        try:
            # httpx's timeout bounds each read, so a receiver dripping a byte at a time
            # would hold the attempt forever: the deadline covers the whole exchange.
            async with asyncio.timeout(target.timeout):
                status = await self._exchange(target, notice, url)
        except TimeoutError:
            return f"no answer within {target.timeout}s", True
        except httpx.LocalProtocolError as exc:
            # Our own request refused before sending: h11 quotes the offending header value.
            return f"{type(exc).__name__}: the request is invalid (a header or the URL)", False
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {_redacted(str(exc), target, url)}", True
        if status < 300:
            return "", False
        # 4xx other than 429 will not change on a retry (a revoked Slack hook answers 404).
        return f"status {status}", status >= 500 or status == 429

    async def _exchange(self, target: NotifyTarget, notice: Notice, url: str) -> int:
        """POST the notice; read at most ``BODY_LIMIT`` of the answer (nobody needs it, and
        an endless body must not grow the process); return the status."""
        assert self._client is not None
        headers = {name: value.get_secret_value() for name, value in target.headers.items()}
        request = self._client.build_request(
            "POST", url, json=payload(target, notice), headers=headers, timeout=target.timeout
        )
        response = await self._client.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= BODY_LIMIT:
                    break
        finally:
            await response.aclose()
        return response.status_code


def _redacted(text: str, target: NotifyTarget, url: str | None = None) -> str:
    """``text`` without the URL or any header value, as written or as a library quotes them
    (h11 refuses a header as ``Illegal header value b'...'``): both may be credentials."""
    secrets = [target.url.get_secret_value(), url or ""]
    for value in target.headers.values():
        raw = value.get_secret_value()
        secrets += [raw, repr(raw)[1:-1], repr(raw.encode())[2:-1]]
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text
