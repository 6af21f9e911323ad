"""Probes against real loopback servers: every outcome has a short reason and none raises."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.support import HttpSite
from trafficflip.config.schema import DnsCheck, HttpCheck, TcpCheck
from trafficflip.runtime.probes import HttpPath, Prober


@pytest.fixture(params=["lean", "httpx"])
async def prober(request: pytest.FixtureRequest) -> AsyncIterator[Prober]:
    """Every probe test runs on both HTTP paths (the other checks simply run twice)."""
    prober = Prober(http=request.param)
    yield prober
    await prober.close()


def http_check(url: str, **kwargs: Any) -> HttpCheck:
    return HttpCheck(type="http", url=url, **kwargs)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_http_outcomes(prober: Prober, site: HttpSite) -> None:
    assert (await prober.probe(http_check(site.url, body="ok"), 1.0)).reason == "ok"
    assert (await prober.probe(http_check(site.url, body_regex="^o."), 1.0)).ok
    assert (await prober.probe(http_check(site.url, body="healthy"), 1.0)).reason == "body mismatch"
    site.status = 503
    result = await prober.probe(http_check(site.url), 1.0)
    assert (result.ok, result.reason) == (False, "status 503")
    assert (await prober.probe(http_check(site.url, expect_status=[503]), 1.0)).ok


async def test_http_connect_refused_and_timeout(prober: Prober, silent_server: str) -> None:
    closed = HttpSite()  # never started: nothing listens on its port
    assert (await prober.probe(http_check(closed.url), 1.0)).reason == "connect refused"
    result = await prober.probe(http_check(f"http://{silent_server}/healthz"), 0.2)
    assert (result.ok, result.reason) == (False, "timeout")


async def test_http_latency_limit(prober: Prober, site: HttpSite) -> None:
    result = await prober.probe(http_check(site.url, max_latency=0.000001), 1.0)
    assert not result.ok and result.reason.startswith("slow ")


async def test_http_host_header_is_sent(prober: Prober) -> None:
    seen: list[str] = []
    site = HttpSite()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((site.host, site.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert (await prober.probe(http_check(site.url, host="www.example.com"), 1.0)).ok
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["www.example.com"]


async def test_tcp(prober: Prober, site: HttpSite) -> None:
    assert (await prober.probe(TcpCheck(type="tcp", address=f"127.0.0.1:{site.port}"), 1.0)).ok
    site.stop()
    result = await prober.probe(TcpCheck(type="tcp", address=f"127.0.0.1:{site.port}"), 1.0)
    assert (result.ok, result.reason) == (False, "connect refused")


@pytest.fixture
def dns_server() -> Iterator[str]:
    """A minimal UDP responder: www.example.com A 192.0.2.10, NXDOMAIN for anything else."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            if name == "www.example.com.":
                reply.answer.append(dns.rrset.from_text(name, 30, "IN", "A", "192.0.2.10"))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    sock.close()


async def test_dns(prober: Prober, dns_server: str) -> None:
    def check(name: str, **kwargs: Any) -> DnsCheck:
        return DnsCheck(type="dns", server=dns_server, name=name, **kwargs)

    assert (await prober.probe(check("www.example.com."), 1.0)).ok
    assert (await prober.probe(check("www.example.com.", expect=["192.0.2.10"]), 1.0)).ok
    mismatch = await prober.probe(check("www.example.com.", expect=["192.0.2.99"]), 1.0)
    assert mismatch.reason == "answer mismatch"
    assert (await prober.probe(check("nope.example.com."), 1.0)).reason == "dns NXDOMAIN"


async def test_dns_timeout(prober: Prober) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        check = DnsCheck(type="dns", server=f"127.0.0.1:{sock.getsockname()[1]}", name="x.")
        assert (await prober.probe(check, 0.2)).reason == "timeout"
    finally:
        sock.close()


async def test_a_timeout_while_our_loop_was_stalled_is_inconclusive(
    prober: Prober, silent_server: str
) -> None:
    import asyncio
    import time

    check = http_check(f"http://{silent_server}/healthz")
    await prober.probe(check, 0.2)  # starts the loop monitor

    async def stall() -> None:
        await asyncio.sleep(0.01)
        time.sleep(0.3)  # a CPU-bound stretch of our own, as under overload

    stalling = asyncio.ensure_future(stall())
    result = await prober.probe(check, 0.2)
    await stalling
    assert result.inconclusive and result.reason.startswith("inconclusive: prober overloaded")
    # Without a stall the same timeout is the site's fault.
    result = await prober.probe(check, 0.2)
    assert (result.ok, result.inconclusive, result.reason) == (False, False, "timeout")


@pytest.mark.parametrize("path", ["lean", "httpx"])
async def test_probes_beyond_the_in_flight_bound_wait_without_their_timeout_running(
    silent_server: str, path: HttpPath
) -> None:
    import asyncio
    import time

    prober = Prober(max_in_flight=1, http=path)
    try:
        check = http_check(f"http://{silent_server}/healthz")
        started = time.monotonic()
        first, second = await asyncio.gather(prober.probe(check, 0.2), prober.probe(check, 0.2))
        assert (first.reason, second.reason) == ("timeout", "timeout")
        # The second waited for the whole first probe before its own timeout started, so its
        # latency leaves out the wait (``at`` and latency are both monotonic).
        assert (second.at - started) - second.latency >= first.latency * 0.9
    finally:
        await prober.close()


# Run in a child process: it lowers its own descriptor limit, fills it, then probes.
EXHAUSTED = """
import asyncio, resource, socket, sys
from trafficflip.config.schema import HttpCheck, TcpCheck
from trafficflip.runtime.probes import Prober

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main() -> None:
    prober = Prober(http=sys.argv[1])
    held = []
    try:
        while len(held) < 100:  # bounded: the limit is 64
            held.append(socket.socket())
    except OSError:
        pass
    checks = [HttpCheck(type="http", url=sys.argv[2]), TcpCheck(type="tcp", address=sys.argv[3])]
    for check in checks:
        result = await prober.probe(check, 1.0)
        print(result.ok, result.inconclusive, result.reason, sep="|")

asyncio.run(main())
"""


@pytest.mark.parametrize("path", ["lean", "httpx"])
def test_a_probe_without_a_descriptor_is_inconclusive(path: HttpPath, site: HttpSite) -> None:
    """EMFILE is this process's shortage, not the site's failure: it counts neither way."""
    address = site.url.split("/")[2]
    result = subprocess.run(
        [sys.executable, "-c", EXHAUSTED, path, site.url, address],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines == ["False|True|inconclusive: local resources exhausted (EMFILE)"] * 2, lines
