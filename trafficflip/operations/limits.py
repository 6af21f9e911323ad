"""What one HTTP client may take from the service: bytes, time and file descriptors.

The API shares the process's descriptors with the probes, and a probe that cannot open a
socket is no evidence against a site. So the API holds at most ``connection_cap`` connections
(new ones beyond it are closed as they are accepted), a request must arrive whole within
``REQUEST_READ_TIMEOUT`` (a half-sent request, or an idle connection, is closed), request
heads are capped at ``MAX_HEAD`` and bodies at ``api.max_body`` (``BodyLimit``).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

# Seconds a client has to send a whole request, from its connection or from the end of the
# previous answer; an operator's request is a few hundred bytes.
REQUEST_READ_TIMEOUT = 10.0
# Seconds an idle kept-alive connection stays open (uvicorn's default).
KEEP_ALIVE = 5
# The most bytes of a request's line and headers (h11's default, named here).
MAX_HEAD = 16 * 1024
# The API's connections: a handful of operators, dashboards and scrapers. Fewer when the
# descriptor limit is low: ``DESCRIPTOR_RESERVE`` stays for probes, providers, the store and
# webhooks (a probe takes one descriptor; at most probes.MAX_IN_FLIGHT run at once).
MAX_CONNECTIONS = 256
DESCRIPTOR_RESERVE = 512
MIN_CONNECTIONS = 8


def connection_cap(open_files: int | None = None) -> int:
    """How many connections the API may hold under the soft RLIMIT_NOFILE (or ``open_files``)."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    spare = max(open_files - DESCRIPTOR_RESERVE, open_files // 4)
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, spare))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two guards. A connection beyond ``limit_concurrency`` is
    closed when accepted (uvicorn would keep it and answer 503 only once it sends a request,
    so half-sent requests would still hold descriptors), and a request that has not arrived
    whole ``REQUEST_READ_TIMEOUT`` after the connection opened or the last answer ended closes
    the connection (uvicorn's keep-alive timer stops at the first byte received)."""

    _refused = False
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            self._refused = True
            transport.abort()  # the descriptor is released now, not after a lingering close
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request is in: the application's time is not bounded here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(REQUEST_READ_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_limits(open_files: int | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that apply these limits."""
    return {
        "http": GuardedH11Protocol,
        "limit_concurrency": connection_cap(open_files),
        "timeout_keep_alive": KEEP_ALIVE,
        "h11_max_incomplete_event_size": MAX_HEAD,
    }


class BodyLimit:
    """Refuses a request body above ``limit`` bytes with 413, whether it declares its length
    or streams it, before the application reads it into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body above {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"detail": "request body too large"}, status_code=413)
    await response(scope, receive, send)
