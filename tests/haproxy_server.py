"""A real HAProxy on loopback for tests: ``haproxy -db -f CONFIG``, stopped by its PID.

The stats socket (``level admin``) lives in a short temporary folder: a unix socket path
must fit in 108 bytes, which pytest's ``tmp_path`` does not promise.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.support import HttpSite, Process, free_port, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "be"

CONFIG = """\
global
    stats socket {socket} level admin
{tcp_socket}
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    # A dead server answers 503 at once: the tests look at weights, not at retries.
    retries 0
frontend fe
    bind 127.0.0.1:{frontend_port}
    default_backend {backend}
backend {backend}
    balance {balance}
{servers}
{extra}"""


def require_haproxy() -> None:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed (make system-packages installs it)")


class HaproxyServer:
    """One HAProxy process: a frontend on a free port and one backend of loopback servers.

    No health checks are configured: which server gets a request is decided by the weights
    alone, so a test sees exactly what trafficflip wrote.
    """

    def __init__(
        self,
        servers: Mapping[str, HttpSite],
        *,
        backend: str = BACKEND,
        tcp_api: bool = False,
        weight: int = 1,
        balance: str = "roundrobin",
        extra_backends: Sequence[str] = (),
    ) -> None:
        require_haproxy()
        self.dir = Path(tempfile.mkdtemp(prefix="tf-haproxy-"))
        self.socket = str(self.dir / "admin.sock")
        self.api_port = free_port() if tcp_api else None
        self.frontend_port = free_port()
        self.backend = backend
        self.balance = balance
        # More backends with the same servers, for several services on one instance.
        self.extra_backends = tuple(extra_backends)
        self.config_path = self.dir / "haproxy.cfg"
        self.config_path.write_text(self._config(servers, weight), encoding="utf-8")
        self.process: Process | None = None

    @property
    def address(self) -> str:
        assert self.api_port is not None, "started without tcp_api"
        return f"127.0.0.1:{self.api_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"

    def _config(self, servers: Mapping[str, HttpSite], weight: int) -> str:
        tcp = f"    stats socket ipv4@{self.address} level admin" if self.api_port else ""
        lines = "\n".join(
            f"    server {name} {site.host}:{site.port} weight {weight}"
            for name, site in servers.items()
        )
        return CONFIG.format(
            socket=self.socket,
            tcp_socket=tcp,
            frontend_port=self.frontend_port,
            backend=self.backend,
            balance=self.balance,
            servers=lines,
            extra="".join(
                f"backend {name}\n    balance {self.balance}\n{lines}\n"
                for name in self.extra_backends
            ),
        )

    def start(self) -> HaproxyServer:
        args = [HAPROXY, "-db", "-f", str(self.config_path)]
        self.process = Process(args, log=self.dir / "haproxy.log")
        wait_until(self._answers, timeout=10, what="haproxy's stats socket")
        return self

    def _answers(self) -> bool:
        assert self.process is not None and self.process.alive(), self.output()
        try:
            return "Name: HAProxy" in self.command("show info")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        """Stop and start again: HAProxy forgets every runtime weight."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def output(self) -> str:
        return self.process.output() if self.process else ""

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(self.socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def weights(self, backend: str | None = None) -> dict[str, int]:
        """Server -> runtime weight, as ``show servers state`` reports it."""
        lines = self.command(f"show servers state {backend or self.backend}").splitlines()
        columns = lines[1].removeprefix("# ").split()
        name, weight = columns.index("srv_name"), columns.index("srv_uweight")
        rows = [line.split() for line in lines[2:] if line.strip()]
        return {row[name]: int(row[weight]) for row in rows}

    def get(self) -> tuple[int, str]:
        """One request through the frontend: (status, body)."""
        try:
            with urllib.request.urlopen(self.url, timeout=2) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()
