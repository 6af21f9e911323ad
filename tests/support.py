"""Shared test helpers: loopback HTTP sites, free ports, polling with a deadline, processes."""

from __future__ import annotations

import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


class HttpSite:
    """A loopback HTTP server answering ``/healthz`` with ``status`` and ``body``."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        # A port picked here is only a placeholder (a closed port, for a site never started):
        # the first start binds port 0 and takes the kernel's, since a port free a moment ago
        # may be another socket's by then. A restart keeps the port it had.
        self.port = port or free_port(host)
        self._placeholder = port is None
        self.status = 200
        self.body = b"ok"
        self.requests = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/healthz"

    def start(self) -> HttpSite:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                site.requests += 1
                try:
                    self.send_response(site.status)
                    self.send_header("Content-Length", str(len(site.body)))
                    self.end_headers()
                    self.wfile.write(site.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the prober had what it needed (the status) and hung up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        port = 0 if self._placeholder else self.port
        self._server = http.server.ThreadingHTTPServer((self.host, port), Handler)
        self.port, self._placeholder = int(self._server.server_address[1]), False
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: new connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None


class Process:
    """A child process we started; stopped by its PID, never by name."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log
        self._out = open(log, "wb") if log else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            env={**os.environ, **(env or {})},
            stdout=self._out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal our child by PID and wait for it; SIGKILL if it does not go in time."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        if self._out is not None:
            self._out.close()
            self._out = None
        return int(self.proc.returncode)


def trafficflip_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trafficflip", *args]


class MotoServer(Process):
    """moto in server mode on a loopback port: the real AWS HTTP API, emulated."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        moto = Path(sys.executable).with_name("moto_server")
        super().__init__([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], log=log)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._up, timeout=30, what="moto_server to listen")

    def _up(self) -> bool:
        assert self.alive(), self.output()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def client(self, service: str) -> Any:
        """A boto3 client of this server (the test's own view of the backend)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self) -> dict[str, str]:
        """The environment that points boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


ROUTE53_THROTTLED = (
    b'<?xml version="1.0"?>\n<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">'
    b"<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    b"<RequestId>throttled</RequestId></ErrorResponse>"
)


# Route53's answers for the faults ``CountingProxy.fail_next`` injects: (HTTP status, code).
ROUTE53_FAULTS = {
    "Throttling": (400, "Throttling"),
    "PriorRequestNotComplete": (400, "PriorRequestNotComplete"),
    "ServiceUnavailable": (503, "ServiceUnavailable"),
}


def route53_error(code: str) -> bytes:
    return (
        b'<?xml version="1.0"?>\n<ErrorResponse xmlns="https://route53.amazonaws.com/doc/'
        b'2013-04-01/"><Error><Type>Sender</Type><Code>' + code.encode() + b"</Code>"
        b"<Message>injected by the test</Message></Error><RequestId>fault</RequestId>"
        b"</ErrorResponse>"
    )


class CountingProxy:
    """A loopback HTTP proxy in front of moto that counts Route53 change calls and, with
    ``max_changes_per_second``, refuses calls beyond that rate as Route53 does (Throttling).
    ``fail_next`` makes the next calls, whatever they are, answer the given faults."""

    def __init__(self, target: str, *, max_changes_per_second: float | None = None) -> None:
        self.target = target.removeprefix("http://")
        self.changes = 0
        self.throttled = 0
        self.requests = 0
        # When the last change call was answered (time.monotonic()): records moved by then.
        self.last_change_done: float | None = None
        self._rate = max_changes_per_second
        self._recent: list[float] = []
        self._faults: list[str] = []
        # When each injected fault was answered (time.monotonic()).
        self.faulted_at: list[float] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    fault = proxy._faults.pop(0) if proxy._faults else None
                    if fault is not None:
                        proxy.faulted_at.append(time.monotonic())
                if fault is not None:
                    status, code = ROUTE53_FAULTS[fault]
                    self._reply(status, route53_error(code), "text/xml")
                    return
                # boto3 posts to .../rrset/ (a trailing slash); count either form.
                change = self.path.split("?")[0].rstrip("/").endswith("/rrset")
                if self.command == "POST" and change and not proxy.admit():
                    self._reply(400, ROUTE53_THROTTLED, "text/xml")
                    return
                conn = http.client.HTTPConnection(proxy.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                if self.command == "POST" and change and response.status == 200:
                    proxy.last_change_done = time.monotonic()
                self._reply(response.status, data, response.getheader("Content-Type", ""))

            def _reply(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _forward  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail_next(self, faults: list[str]) -> None:
        """Answer the next ``len(faults)`` calls with these Route53 errors, in order."""
        with self._lock:
            self._faults = list(faults)

    @property
    def faults_left(self) -> int:
        with self._lock:
            return len(self._faults)

    def admit(self) -> bool:
        """Count a change call; False when it exceeds the enforced rate (one-second window)."""
        with self._lock:
            now = time.monotonic()
            self._recent = [t for t in self._recent if t > now - 1.0]
            if self._rate is not None and len(self._recent) >= self._rate:
                self.throttled += 1
                return False
            self._recent.append(now)
            self.changes += 1
            return True

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
