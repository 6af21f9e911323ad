"""Health probes: HTTP(S), TCP connect and DNS. Every probe has a hard timeout and never raises.

HTTP checks take one of two paths (``Prober(http=...)``):

- ``lean`` (the default): ``trafficflip.runtime.probe_http``, an ``asyncio.Protocol`` feeding
  llhttp (``httptools``), for every check whose URL has no credentials in it;
- ``httpx``: the shared ``httpx.AsyncClient`` (a client per request leaks sockets), for URLs
  with ``user:pass@`` (Basic auth), and for every check when ``http="httpx"``. Certificate
  verification is a client setting in httpx, so checks with ``verify: false`` share a second
  client.

Both paths give the same reasons: ``status N``, ``body mismatch``, ``timeout``, ``connect
refused``, ``tls error``, ``protocol error``, ``headers too large``, ``connect error``, ``slow
...``, ``inconclusive: prober overloaded ...`` and, when this process could not open a socket
(``LOCAL_EXHAUSTION``), ``inconclusive: local resources exhausted (EMFILE)``. Headers are
capped at ``MAX_HEADERS`` on the lean path, and at httpcore's own 100 KiB
(``MAX_INCOMPLETE_EVENT_SIZE``) on the httpx path. Results are stamped with ``clock``
(monotonic by default, as every decision compares them).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httpx

from trafficflip.config.schema import Check, DnsCheck, HttpCheck, TcpCheck, split_host_port
from trafficflip.decision.model import ProbeResult
from trafficflip.runtime.probe_http import (
    MAX_BODY,
    USER_AGENT,
    AnswerError,
    HeadersTooLarge,
    LeanRequest,
    lean_http,
    lean_supports,
    tls_contexts,
)

HttpPath = Literal["lean", "httpx"]
# Checks come from the configuration; a caller minting new ones per probe must not grow this.
PREPARED_CACHE = 100_000
# A timeout during which our own event loop stalled this share of the timeout is ours.
OVERLOAD_FRACTION = 0.25
MAX_IN_FLIGHT = 64
# Errors that say this process or host is out of descriptors or buffers, not that the site
# is down: such a probe counts neither way (a flood of API connections once failed every
# site at once with EMFILE).
LOCAL_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
HEARTBEAT = 0.05


class LoopMonitor:
    """Measures how late the event loop runs a periodic heartbeat (its scheduling lag)."""

    def __init__(self, keep: float = 60.0) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        self._keep = keep
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._beat())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(HEARTBEAT)
            now = time.monotonic()
            self._samples.append((now, now - before - HEARTBEAT))
            while self._samples and self._samples[0][0] < now - self._keep:
                self._samples.popleft()

    def worst_lag(self, since: float) -> float:
        """The largest lateness of a heartbeat that ended after ``since``; a heartbeat still
        pending counts for how late it already is."""
        done = [lag for at, lag in self._samples if at >= since]
        last = self._samples[-1][0] if self._samples else since
        pending = time.monotonic() - max(last, since) - HEARTBEAT
        return max([*done, pending, 0.0])


class Prober:
    """Runs checks. ``clock`` (monotonic) stamps results; latency uses the monotonic clock."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int = MAX_IN_FLIGHT,
        *,
        http: HttpPath = "lean",
    ) -> None:
        self.clock = clock
        self.http_path = http
        # Prepared lean requests by check identity; the check is kept so its id stays unique.
        self._lean: dict[int, tuple[HttpCheck, LeanRequest | None]] = {}
        self._tls = tls_contexts()
        self.loop_monitor = LoopMonitor()
        # httpcore scans its whole pool on every request: with hundreds of requests in it an
        # overloaded prober slows down quadratically. Probes beyond this wait their turn, and
        # their timeout starts when they run, so waiting never fails a site.
        self._slots = asyncio.Semaphore(max_in_flight)
        # Every probe opens a fresh connection, as HAProxy's and Route53's checks do: a kept-
        # alive socket can outlive a listener that no longer accepts.
        limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=0)
        headers = {"User-Agent": USER_AGENT}
        self._clients = {
            verify: httpx.AsyncClient(
                verify=verify, limits=limits, headers=headers, follow_redirects=False
            )
            for verify in (True, False)
        }

    async def close(self) -> None:
        self.loop_monitor.stop()
        for client in self._clients.values():
            await client.aclose()

    async def probe(self, check: Check, timeout: float) -> ProbeResult:
        """Run ``check`` once; the result says why it failed. Never raises."""
        async with self._slots:
            return await self._probe(check, timeout)

    async def _probe(self, check: Check, timeout: float) -> ProbeResult:
        self.loop_monitor.ensure_running()
        started = time.monotonic()
        try:
            # asyncio.timeout, not wait_for: no extra task per probe.
            async with asyncio.timeout(timeout):
                reason = await self._run(check, timeout)
        except TimeoutError:
            reason = "timeout"
        except Exception as exc:  # a probe must never take the scheduler down
            exhausted = local_exhaustion(exc)
            if exhausted is not None:
                reason = f"inconclusive: local resources exhausted ({exhausted})"
                latency = time.monotonic() - started
                return ProbeResult(False, reason, latency, self.clock(), inconclusive=True)
            reason = _describe_error(exc)
        latency = time.monotonic() - started
        if reason is None and isinstance(check, HttpCheck) and check.max_latency is not None:
            if latency > check.max_latency:
                reason = f"slow {latency * 1000:.0f}ms > {check.max_latency * 1000:.0f}ms"
        if reason is not None and reason.startswith(("timeout", "slow")):
            lag = self.loop_monitor.worst_lag(since=started)
            if lag > timeout * OVERLOAD_FRACTION:
                # Our own loop was too busy to read the answer: that is not the site's fault.
                reason = f"inconclusive: prober overloaded (loop lag {lag * 1000:.0f}ms)"
                return ProbeResult(False, reason, latency, self.clock(), inconclusive=True)
        return ProbeResult(reason is None, reason or "ok", latency, self.clock())

    async def _run(self, check: Check, timeout: float) -> str | None:
        if isinstance(check, HttpCheck):
            return await self._http(check, timeout)
        if isinstance(check, TcpCheck):
            return await _tcp(check)
        return await _dns(check, timeout)

    def _prepared(self, check: HttpCheck) -> LeanRequest | None:
        """The lean request for ``check``, or None when it takes the httpx path."""
        entry = self._lean.get(id(check))
        if entry is None or entry[0] is not check:
            lean = self.http_path == "lean" and lean_supports(check)
            entry = (check, LeanRequest.prepare(check) if lean else None)
            if len(self._lean) >= PREPARED_CACHE:
                self._lean.clear()
            self._lean[id(check)] = entry
        return entry[1]

    async def _http(self, check: HttpCheck, timeout: float) -> str | None:
        prepared = self._prepared(check)
        if prepared is not None:
            return await lean_http(check, prepared, self._tls)
        return await self._httpx(check, timeout)

    async def _httpx(self, check: HttpCheck, timeout: float) -> str | None:
        headers = dict(check.headers)
        if check.host:
            headers["Host"] = check.host
        extensions = {"sni_hostname": check.sni} if check.sni else None
        client = self._clients[check.verify]
        async with client.stream(
            check.method, check.url, headers=headers, timeout=timeout, extensions=extensions
        ) as response:
            if response.status_code not in check.expect_status:
                return f"status {response.status_code}"
            if check.body is None and check.body_regex is None:
                return None
            body = await _read_prefix(response)
        if check.body is not None and check.body not in body:
            return "body mismatch"
        if check.body_regex is not None and not re.search(check.body_regex, body):
            return "body mismatch"
        return None


async def _read_prefix(response: httpx.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY:
            break
    return b"".join(chunks)[:MAX_BODY].decode("utf-8", errors="replace")


async def _tcp(check: TcpCheck) -> str | None:
    host, port = split_host_port(check.address)
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # the connect succeeded; a reset on close says nothing about health
    return None


async def _dns(check: DnsCheck, timeout: float) -> str | None:
    host, port = split_host_port(check.server, default_port=53)
    query = dns.message.make_query(check.name, check.rdtype)
    send = dns.asyncquery.tcp if check.tcp else dns.asyncquery.udp
    response = await send(query, host, port=port, timeout=timeout)
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        return f"dns {dns.rcode.to_text(rcode)}"
    rdtype = dns.rdatatype.from_text(check.rdtype)
    values = {
        rdata.to_text().lower()
        for rrset in response.answer
        if rrset.rdtype == rdtype
        for rdata in rrset
    }
    if not values:
        return "no answer"
    if check.expect and not {v.lower() for v in check.expect} <= values:
        return "answer mismatch"
    return None


def local_exhaustion(exc: BaseException) -> str | None:
    """The errno name (``EMFILE``) when ``exc`` or what caused it is one of
    ``LOCAL_EXHAUSTION``, else None."""
    seen: BaseException | None = exc
    for _ in range(10):  # causes chain a few levels deep (httpx, httpcore, the OS error)
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in LOCAL_EXHAUSTION:
            return errno.errorcode.get(seen.errno, os.strerror(seen.errno))
        seen = seen.__cause__ or seen.__context__
    return None


def _describe_error(exc: BaseException) -> str:
    """A short, stable reason for a probe failure (counted by reason in metrics)."""
    if isinstance(exc, httpx.TimeoutException | dns.exception.Timeout):
        return "timeout"
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        if isinstance(cause, ConnectionRefusedError | ssl.SSLError):
            break
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    if isinstance(cause, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connect refused"
    if isinstance(cause, ssl.SSLError) or "certificate" in str(exc).lower():
        return "tls error"
    if isinstance(exc, HeadersTooLarge) or (
        # h11's words when an answer's head outgrows httpcore's buffer limit.
        isinstance(exc, httpx.RemoteProtocolError) and "buffer too long" in str(exc)
    ):
        return "headers too large"
    if isinstance(exc, httpx.RemoteProtocolError | AnswerError):
        return "protocol error"
    if isinstance(exc, httpx.ConnectError | OSError):
        return "connect error"
    return f"error {type(exc).__name__}"
