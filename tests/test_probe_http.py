"""HTTP probe details on both paths (lean httptools and httpx): TLS, SNI, HEAD, the body cap,
malformed answers, and which path a check takes. Servers are real loopback sockets."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trafficflip.config.schema import HttpCheck
from trafficflip.runtime.probe_http import MAX_BODY, lean_supports
from trafficflip.runtime.probes import HttpPath, Prober

PATHS = ["lean", "httpx"]


class RawSite:
    """A loopback server answering every request with ``answer`` (raw bytes), recording the
    requests it read and, with TLS, the SNI each client sent."""

    def __init__(self, answer: bytes, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.requests: list[bytes] = []
        self.sni: list[str | None] = []
        self._server: asyncio.Server | None = None
        if tls is not None:
            tls.sni_callback = self._record_sni

    def _record_sni(self, _sock: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def __aenter__(self) -> RawSite:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, scheme: str = "http", path: str = "/healthz") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(self.answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b"ok", status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


def check(url: str, **kwargs: Any) -> HttpCheck:
    return HttpCheck(type="http", url=url, **kwargs)


@pytest.fixture(params=PATHS)
async def prober(request: pytest.FixtureRequest) -> AsyncIterator[Prober]:
    prober = Prober(http=request.param)
    yield prober
    await prober.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for www.example.test and 127.0.0.1 (no CA trusts it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])
    now = datetime.datetime.now(datetime.UTC)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("www.example.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


async def test_tls_verify_on_refuses_an_untrusted_certificate_and_off_accepts_it(
    prober: Prober, certificate: tuple[Path, Path]
) -> None:
    async with RawSite(ok(), tls=server_context(certificate)) as site:
        assert (await prober.probe(check(site.url("https")), 2.0)).reason == "tls error"
        result = await prober.probe(check(site.url("https"), verify=False, body="ok"), 2.0)
        assert (result.ok, result.reason) == (True, "ok")


async def test_tls_verify_on_accepts_a_trusted_certificate_with_its_sni(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SSL_CERT_FILE is how an operator adds a private CA; both paths read it at start.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    for path in PATHS:
        prober = Prober(http=path)  # type: ignore[arg-type]
        try:
            async with RawSite(ok(), tls=server_context(certificate)) as site:
                by_ip = await prober.probe(check(site.url("https")), 2.0)
                named = check(site.url("https"), sni="www.example.test", host="www.example.test")
                by_name = await prober.probe(named, 2.0)
                wrong = await prober.probe(check(site.url("https"), sni="other.test"), 2.0)
            assert (by_ip.reason, by_name.reason, wrong.reason) == ("ok", "ok", "tls error")
            # Python's ssl sends no SNI for an IP address; ``sni`` names the certificate.
            assert site.sni == [None, "www.example.test", "other.test"], path
            assert b"host: www.example.test" in site.requests[1].lower()
        finally:
            await prober.close()


async def test_head_reads_no_body(prober: Prober) -> None:
    # A HEAD answer announces a length it never sends; reading a body would time out.
    async with RawSite(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n") as site:
        result = await prober.probe(check(site.url(), method="HEAD"), 1.0)
        assert (result.ok, result.reason) == (True, "ok")
        assert site.requests[0].startswith(b"HEAD /healthz HTTP/1.1")


async def test_body_is_matched_on_a_capped_prefix(prober: Prober) -> None:
    early = b"ok" + b"x" * (2 * MAX_BODY)
    late = b"x" * MAX_BODY + b"ok"
    async with RawSite(ok(early)) as site:
        assert (await prober.probe(check(site.url(), body="ok"), 2.0)).ok
    async with RawSite(ok(late)) as site:
        assert (await prober.probe(check(site.url(), body="ok"), 2.0)).reason == "body mismatch"
        regex = check(site.url(), body_regex="x{100}")
        assert (await prober.probe(regex, 2.0)).ok


async def test_chunked_body_and_extra_headers(prober: Prober) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n5\r\n good\r\n0\r\n\r\n"
    )
    async with RawSite(chunked) as site:
        probe = check(site.url("http", "/h?full=1"), body_regex="^all good$", headers={"X-K": "v"})
        assert (await prober.probe(probe, 1.0)).reason == "ok"
        request = site.requests[0].lower()
        assert request.startswith(b"get /h?full=1 http/1.1") and b"x-k: v" in request
        assert b"user-agent: trafficflip-probe" in request


@pytest.mark.parametrize(
    "answer", [b"NOT HTTP AT ALL\r\n\r\n", b""], ids=["garbage", "closed-without-answer"]
)
async def test_malformed_answers_are_protocol_errors(prober: Prober, answer: bytes) -> None:
    async with RawSite(answer) as site:
        assert (await prober.probe(check(site.url()), 1.0)).reason == "protocol error"


async def test_a_body_without_length_ends_when_the_site_closes(prober: Prober) -> None:
    async with RawSite(b"HTTP/1.0 200 OK\r\n\r\nall good") as site:
        assert (await prober.probe(check(site.url(), body="good"), 1.0)).reason == "ok"


async def test_a_body_cut_short_of_its_length_is_a_protocol_error(prober: Prober) -> None:
    async with RawSite(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok") as site:
        assert (await prober.probe(check(site.url(), body="ok"), 1.0)).reason == "protocol error"


async def test_an_interim_answer_is_skipped(prober: Prober) -> None:
    async with RawSite(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"fine")) as site:
        assert (await prober.probe(check(site.url(), body="fine"), 1.0)).reason == "ok"


async def test_a_wrong_status_is_named_without_reading_the_body(prober: Prober) -> None:
    # The body announced is never sent: reading it would end in a protocol error.
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000000\r\n\r\ndown"
    async with RawSite(answer) as site:
        assert (await prober.probe(check(site.url(), body="ok"), 1.0)).reason == "status 503"


async def test_status_outside_expectations_is_named(prober: Prober) -> None:
    async with RawSite(ok(b"", "302 Found")) as site:
        assert (await prober.probe(check(site.url()), 1.0)).reason == "status 302"
        assert (await prober.probe(check(site.url(), expect_status=[200, 302]), 1.0)).ok


async def test_unresolvable_host_is_a_connect_error(prober: Prober) -> None:
    result = await prober.probe(check("http://nonexistent.invalid/healthz"), 2.0)
    assert result.reason == "connect error"


@pytest.mark.parametrize("path", PATHS)
async def test_credentials_in_the_url_take_the_httpx_path(path: HttpPath) -> None:
    with_credentials = check("http://probe:secret@127.0.0.1:1/healthz")
    assert not lean_supports(with_credentials) and lean_supports(check("http://127.0.0.1/"))
    async with RawSite(ok()) as site:
        prober = Prober(http=path)
        try:
            url = site.url().replace("http://", "http://probe:secret@")
            assert (await prober.probe(check(url), 1.0)).ok
        finally:
            await prober.close()
    # httpx turned the URL's credentials into Basic auth ("probe:secret").
    assert b"Authorization: Basic cHJvYmU6c2VjcmV0" in site.requests[0]


class HeaderBomb:
    """A loopback site that answers with a status line and then headers that never end:
    ``lines`` (one short header after another) or ``value`` (one header whose value grows).
    It stops writing when the client closes, or after ``BOMB_LIMIT`` bytes or seconds."""

    BOMB_LIMIT = 64 * 1024 * 1024
    BOMB_SECONDS = 10.0

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.written = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HeaderBomb:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = asyncio.get_running_loop().time()
        chunk = b"X-Pad: " + b"a" * 1000 + b"\r\n" if self.mode == "lines" else b"a" * 1024
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n" + (b"" if self.mode == "lines" else b"X-Big: "))
            while self.written < self.BOMB_LIMIT:
                if asyncio.get_running_loop().time() - started > self.BOMB_SECONDS:
                    break
                writer.write(chunk)
                self.written += len(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the prober closed: what the test waits for
        finally:
            writer.close()


@pytest.mark.parametrize("mode", ["lines", "value"])
async def test_endless_headers_fail_the_probe_at_once(prober: Prober, mode: str) -> None:
    async with HeaderBomb(mode) as site:
        result = await prober.probe(check(f"http://127.0.0.1:{site.port}/healthz"), 3.0)
    assert result.reason == "headers too large", (result.reason, site.written)
    # Not at the timeout, after reading megabytes: at the cap (httpx's is httpcore's 100 KiB).
    assert result.latency < 1.0, result.latency
