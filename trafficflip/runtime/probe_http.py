"""The lean HTTP/1.1 health probe: one request on a fresh connection, the answer parsed by
``httptools`` (llhttp, Node.js's C parser, as uvicorn uses it).

About a seventh of httpx's CPU per probe (see docs/performance.md): no connection pool to
scan, no stream objects, no Python state machine per probe, nothing parsed by hand. The
request's bytes are written by ``h11`` once per check (``LeanRequest``), the answer is read by
an ``asyncio.Protocol`` feeding llhttp. It covers every ``HttpCheck`` key (method,
``expect_status``, ``body``/``body_regex`` on a ``MAX_BODY`` prefix, ``host``, ``headers``,
``verify``, ``sni``, ``max_latency``). A URL carrying credentials (``https://user:pass@host/``)
takes the httpx path, which turns them into Basic auth.

A probe returns a failure reason or ``None`` and lets exceptions propagate to the ``Prober``,
which names them.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import h11
import httptools
import httpx

from trafficflip.config.schema import HttpCheck

# Bodies are matched on a bounded prefix: a health page is small, a misrouted one may not be.
MAX_BODY = 64 * 1024
# The most header bytes read before an answer's headers end (nginx's and Node's default
# limits are 8 and 16 KiB): an endless header must not grow the process or burn a core.
MAX_HEADERS = 16 * 1024
USER_AGENT = "trafficflip-probe"
# An unanswered TLS close_notify must not keep a finished probe's transport for asyncio's 30 s.
TLS_SHUTDOWN_TIMEOUT = 1.0


class AnswerError(Exception):
    """The site's answer was not a complete HTTP response (named "protocol error")."""


class HeadersTooLarge(AnswerError):
    """The answer's headers went on past ``MAX_HEADERS`` (named "headers too large")."""


def lean_supports(check: HttpCheck) -> bool:
    """True when the lean probe can run ``check`` exactly as httpx would."""
    return not httpx.URL(check.url).userinfo


@dataclass(frozen=True)
class LeanRequest:
    """Everything about a check's request that does not change between probes."""

    host: str
    port: int
    tls: bool
    server_hostname: str | None
    payload: bytes
    expect_status: frozenset[int]
    # The answer's body is read only when it is matched; a HEAD answer has none to read.
    read_body: bool
    body_regex: re.Pattern[str] | None

    @classmethod
    def prepare(cls, check: HttpCheck) -> LeanRequest:
        url = httpx.URL(check.url)
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        # The Host header carries the port only when it is not the scheme's default, as httpx.
        authority = f"[{url.host}]" if ":" in url.host else url.host
        if url.port is not None and url.port != (443 if tls else 80):
            authority = f"{authority}:{url.port}"
        headers = {"host": authority, "user-agent": USER_AGENT, "accept": "*/*"}
        headers.update({name.lower(): value for name, value in check.headers.items()})
        if check.host:
            headers["host"] = check.host
        headers["connection"] = "close"
        # h11 writes (and validates) the request once; every probe sends the same bytes.
        writer = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method=check.method, target=url.raw_path, headers=list(headers.items())
        )
        payload = writer.send(request) + writer.send(h11.EndOfMessage())
        wants_body = check.body is not None or check.body_regex is not None
        return cls(
            host=url.host,
            port=port,
            tls=tls,
            # SNI is the URL's host unless ``sni`` says otherwise; never the Host override.
            server_hostname=(check.sni or url.host) if tls else None,
            payload=payload,
            expect_status=frozenset(check.expect_status),
            read_body=wants_body and check.method.upper() != "HEAD",
            body_regex=re.compile(check.body_regex) if check.body_regex is not None else None,
        )


def tls_contexts() -> dict[bool, ssl.SSLContext]:
    """One context per ``verify`` value, built as httpx builds its own (same trust store,
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), so both paths accept the same servers."""
    return {verify: httpx.create_ssl_context(verify=verify) for verify in (True, False)}


async def lean_http(
    check: HttpCheck, prepared: LeanRequest, contexts: dict[bool, ssl.SSLContext]
) -> str | None:
    """Probe ``check`` once: ``None`` when healthy, else the reason. The caller bounds time."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    if prepared.tls:
        transport, _ = await loop.create_connection(
            lambda: _Exchange(prepared, answer),
            prepared.host,
            prepared.port,
            ssl=contexts[check.verify],
            server_hostname=prepared.server_hostname,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
    else:
        transport, _ = await loop.create_connection(
            lambda: _Exchange(prepared, answer), prepared.host, prepared.port
        )
    try:
        status, body = await answer
    finally:
        transport.close()
    if status not in check.expect_status:
        return f"status {status}"
    if check.body is None and check.body_regex is None:
        return None
    return match_body(check, prepared, body)


class _Exchange(asyncio.Protocol):
    """Sends the prepared request and resolves ``answer`` with the status and the body prefix
    as soon as they are known (at the end of the headers when no body is matched)."""

    def __init__(self, prepared: LeanRequest, answer: asyncio.Future[tuple[int, bytes]]) -> None:
        self.prepared = prepared
        self.answer = answer
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body: list[bytes] = []
        self.body_size = 0
        # Bytes received while the headers were still being read (interim answers included).
        self.header_bytes = 0
        self.headers_done = False
        # An answer without Content-Length or chunked encoding ends when the site closes.
        self.framed = False

    # -- transport --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.prepared.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        if not self.headers_done:
            self.header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.answer.done():
                self.answer.set_exception(AnswerError(str(exc)))
            return
        # Checked after the feed: a read may hold the end of the headers and body bytes.
        if not self.headers_done and self.header_bytes > MAX_HEADERS and not self.answer.done():
            self.answer.set_exception(HeadersTooLarge(f"headers above {MAX_HEADERS} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer.done():
            return
        if exc is not None:
            self.answer.set_exception(exc)
        elif self.status and not self.framed:
            self._resolve()  # the close ends a body that had no length
        else:
            self.answer.set_exception(AnswerError("closed before a complete answer"))

    # -- parser callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.framed = False
            return  # an interim answer (100 Continue): the real one follows
        self.headers_done = True
        self.status = status
        if not self.prepared.read_body or status not in self.prepared.expect_status:
            self._resolve()

    def on_body(self, body: bytes) -> None:
        if self.status and not self.answer.done():
            self.body.append(body)
            self.body_size += len(body)
            if self.body_size >= MAX_BODY:
                self._resolve()

    def on_message_complete(self) -> None:
        if self.status:
            self._resolve()

    def _resolve(self) -> None:
        if not self.answer.done():
            self.answer.set_result((self.status, b"".join(self.body)[:MAX_BODY]))


def match_body(check: HttpCheck, prepared: LeanRequest, data: bytes) -> str | None:
    body = data.decode("utf-8", errors="replace")
    if check.body is not None and check.body not in body:
        return "body mismatch"
    if prepared.body_regex is not None and not prepared.body_regex.search(body):
        return "body mismatch"
    return None
