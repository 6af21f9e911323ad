"""Webhooks are bounded: one deadline per attempt, and at most BODY_LIMIT of the answer read.

Against a real ``trafficflip run``: one receiver drips its answer a byte at a time (each read
is quick, the whole never ends), another floods an endless body. The failover lands, the
drip is cut at the target's timeout, and the flood is read no further than the limit.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import PRIMARY, STANDBY, Service
from tests.support import MotoServer, wait_until

# The receivers give up by themselves after this long, so no thread outlives the test.
RECEIVER_LIMIT = 30.0
TIMEOUT = 1.0


class Answering:
    """A loopback receiver that answers every request with ``mode``: ``drip`` (one byte every
    0.1 s) or ``flood`` (64 KiB writes as fast as the client takes them). Records per
    connection how long it stayed open and how many body bytes were written."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections: list[tuple[float, int]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        opened, written = time.monotonic(), 0
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            chunk = b"." if self.mode == "drip" else b"x" * 65536
            while time.monotonic() - opened < RECEIVER_LIMIT and not self._stop.is_set():
                try:
                    conn.sendall(chunk)
                except OSError:  # the client closed: what this test waits for
                    break
                written += len(chunk)
                if self.mode == "drip":
                    time.sleep(0.1)
        self.connections.append((time.monotonic() - opened, written))

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def receivers() -> Iterator[tuple[Answering, Answering]]:
    drip, flood = Answering("drip"), Answering("flood")
    yield drip, flood
    drip.stop()
    flood.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_dripping_or_flooding_receiver_is_cut_off(
    tmp_path: Path, moto_server: MotoServer, receivers: tuple[Answering, Answering]
) -> None:
    drip, flood = receivers
    targets = [
        {
            "name": "drip",
            "url": drip.url(),
            "timeout": TIMEOUT,
            "retries": 0,
            "events": ["failover"],
        },
        {"name": "flood", "url": flood.url(), "timeout": 20, "retries": 0, "events": ["failover"]},
    ]
    service = Service(tmp_path, moto_server, extra_env={"TRAFFICFLIP_NOTIFY": json.dumps(targets)})
    try:
        service.start()
        wait_until(service.answering, timeout=20, what="the API")
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")
        assert service.process is not None
        before = rss_kib(service.process.pid)
        service.primary.stop()
        wait_until(lambda: service.weights() == STANDBY, timeout=5, what="failover")
        wait_until(lambda: drip.connections and flood.connections, timeout=15, what="both cut")
        ((drip_open, drip_bytes),) = drip.connections
        ((flood_open, flood_bytes),) = flood.connections
        # One deadline for the attempt: the drip (a byte every 0.1 s, each read on time)
        # is cut at TIMEOUT, not held for as long as it keeps dripping.
        assert drip_open < TIMEOUT + 2, drip.connections
        # The flood is answered with 200 and read only up to the limit: counted as sent
        # long before its 20 s deadline, with the socket buffers as the only slack.
        assert flood_bytes < 16 * 2**20, flood.connections
        wait_until(
            lambda: (
                'trafficflip_notifications_total{outcome="sent",target="flood"} 1.0'
                in service.get("/metrics").text
            ),
            timeout=5,
            what="the flood notice counted as sent",
        )
        # The drip's connection is cut before its failure is counted: poll, don't race.
        wait_until(
            lambda: 'outcome="failed",target="drip"' in service.get("/metrics").text,
            timeout=5,
            what="the drip notice counted as failed",
        )
        assert f"no answer within {TIMEOUT}s" in service.output()
        growth = rss_kib(service.process.pid) - before
        assert growth < 64 * 1024, f"RSS grew {growth} KiB"
    finally:
        service.close()
