"""The API cannot take the probes' file descriptors (issue 22 item 9).

A real ``trafficflip run`` under ``prlimit --nofile=1024`` on loopback: 1,100 connections to
its API each send half a request and wait. The API keeps at most its connection cap (the
rest are closed as they are accepted), closes the half-sent ones after
REQUEST_READ_TIMEOUT, answers again afterwards, and the probes never run out of descriptors:
no site is called down, nothing fails over.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import PRIMARY, Service
from tests.support import ROOT, MotoServer, Process, trafficflip_command, wait_until
from trafficflip.operations.limits import REQUEST_READ_TIMEOUT, connection_cap

DESCRIPTORS = 1024
HALF_SENT = 1100
# Held for this many probe intervals, longer than fall x interval: a failover would show.
HOLD = 3.0


class Limited(Service):
    """The service started as systemd's default limit would start it."""

    def start(self) -> None:
        self.runs += 1
        self.process = Process(
            ["prlimit", f"--nofile={DESCRIPTORS}", "--",
             *trafficflip_command("run", "--config", str(self.config))],
            env=self.env,
            log=self.tmp_path / f"run{self.runs}.log",
            cwd=ROOT,
        )  # fmt: skip


@pytest.fixture
def service(tmp_path: Path, moto_server: MotoServer) -> Iterator[Service]:
    service = Limited(tmp_path, moto_server)
    service.start()
    try:
        yield service
    finally:
        service.close()


def half_sent(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each with a request line and one header, never finished."""
    opened = []
    for _ in range(count):  # bounded by count
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /api/v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        opened.append(sock)
    return opened


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def test_half_sent_requests_neither_exhaust_descriptors_nor_fail_a_site(
    service: Service,
) -> None:
    wait_until(service.answering, timeout=30, what="the API")
    wait_until(lambda: service.weights() == PRIMARY, timeout=30, what="initial weights")
    held = half_sent(service.port, HALF_SENT)
    try:
        time.sleep(HOLD)
        # Read from the log: without the limits the API itself stops answering.
        assert "site_down" not in service.output(), service.output()[-3000:]
        assert service.weights() == PRIMARY
        refused = sum(closed_by_server(sock) for sock in held)
        # The cap under this limit; the test's own /healthz connection took one slot.
        assert refused >= HALF_SENT - connection_cap(DESCRIPTORS), refused
        wait_until(
            lambda: all(closed_by_server(sock) for sock in held),
            timeout=REQUEST_READ_TIMEOUT + 5,
            what="the half-sent requests closed by the API",
        )
        assert service.answering()
        www = service.www()
        kinds = [event["kind"] for event in www["journal"]]
        assert "failover" not in kinds and "all_down" not in kinds, (kinds, service.output())
        assert service.weights() == PRIMARY
        assert "Too many open files" not in service.output()
    finally:
        for sock in held:
            sock.close()
