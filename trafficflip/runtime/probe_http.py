"""The lean HTTP/1.1 health probe: one request on a fresh asyncio connection, parsed by ``h11``.

About a fifth of httpx's CPU per probe (see docs/performance.md): no connection pool to scan,
no client-side request and response objects, nothing parsed by hand. It covers every
``HttpCheck`` key (method, ``expect_status``, ``body``/``body_regex`` on a ``MAX_BODY`` prefix,
``host``, ``headers``, ``verify``, ``sni``, ``max_latency``). A URL carrying credentials
(``https://user:pass@host/``) takes the httpx path, which turns them into Basic auth.

The request is prepared once per check (``LeanRequest``); a probe returns a failure reason or
``None`` and lets exceptions propagate to the ``Prober``, which names them.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import h11
import httpx

from trafficflip.config.schema import HttpCheck

# Bodies are matched on a bounded prefix: a health page is small, a misrouted one may not be.
MAX_BODY = 64 * 1024
USER_AGENT = "trafficflip-probe"
READ_SIZE = 64 * 1024
# An unanswered TLS close_notify must not keep a finished probe's transport for asyncio's 30 s.
TLS_SHUTDOWN_TIMEOUT = 1.0


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
    request: h11.Request
    want_body: bool
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
        return cls(
            host=url.host,
            port=port,
            tls=tls,
            # SNI is the URL's host unless ``sni`` says otherwise; never the Host override.
            server_hostname=(check.sni or url.host) if tls else None,
            request=h11.Request(
                method=check.method, target=url.raw_path, headers=list(headers.items())
            ),
            want_body=check.body is not None or check.body_regex is not None,
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
    if prepared.tls:
        reader, writer = await asyncio.open_connection(
            prepared.host,
            prepared.port,
            ssl=contexts[check.verify],
            server_hostname=prepared.server_hostname,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
    else:
        reader, writer = await asyncio.open_connection(prepared.host, prepared.port)
    try:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_SIZE)
        writer.write(conn.send(prepared.request) + conn.send(h11.EndOfMessage()))
        return await _read_response(conn, reader, check, prepared)
    finally:
        writer.close()


async def _read_response(
    conn: h11.Connection, reader: asyncio.StreamReader, check: HttpCheck, prepared: LeanRequest
) -> str | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_SIZE))
        elif isinstance(event, h11.Response):
            if event.status_code not in check.expect_status:
                return f"status {event.status_code}"
            if not prepared.want_body:
                return None
        elif isinstance(event, h11.Data):
            chunks.append(event.data)
            size += len(event.data)
            if size >= MAX_BODY:
                break
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    return match_body(check, prepared, b"".join(chunks)[:MAX_BODY])


def match_body(check: HttpCheck, prepared: LeanRequest, data: bytes) -> str | None:
    body = data.decode("utf-8", errors="replace")
    if check.body is not None and check.body not in body:
        return "body mismatch"
    if prepared.body_regex is not None and not prepared.body_regex.search(body):
        return "body mismatch"
    return None
