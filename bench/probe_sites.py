"""Cheap loopback HTTP sites for the probe benchmarks, in their own processes.

Each process answers ``GET /e<i>`` with ``200 ok`` on a raw asyncio ``Protocol`` (no request
objects: the sites must not be the bottleneck) and records when each path was hit on the
monotonic clock. Asked on stdin, it prints what it saw since the last ``reset``: hits and the
gaps between consecutive hits of one path. The benchmarks start several, one per port range.

    python bench/probe_sites.py PORT   (used by bench/probe_*.py; prints "ready", then serves)
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@dataclass
class Hits:
    last: dict[bytes, float] = field(default_factory=dict)
    gaps: list[float] = field(default_factory=list)
    count: int = 0
    since: float = field(default_factory=time.monotonic)


class Site(asyncio.Protocol):
    hits = Hits()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        path = self.buffer.split(b" ", 2)[1]
        now = time.monotonic()
        hits = Site.hits
        hits.count += 1
        last = hits.last.get(path)
        if last is not None:
            hits.gaps.append(now - last)
        hits.last[path] = now
        self.transport.write(RESPONSE)
        self.transport.close()


def report() -> dict[str, Any]:
    hits = Site.hits
    gaps = sorted(hits.gaps)
    return {
        "hits": hits.count,
        "seconds": time.monotonic() - hits.since,
        "gaps": len(gaps),
        "gap_p50": gaps[len(gaps) // 2] if gaps else None,
        "gap_p99": gaps[int(0.99 * (len(gaps) - 1))] if gaps else None,
        "gap_max": gaps[-1] if gaps else None,
    }


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Site, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with server:
        while line := await stdin.readline():
            print(json.dumps(report()), flush=True)
            if line.strip() == b"reset":  # after reporting the period it ends
                Site.hits = Hits()


class Sites:
    """``count`` site processes; ``url(i)`` spreads endpoints over them."""

    def __init__(self, count: int) -> None:
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[str]] = []
        for _ in range(count):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            proc = subprocess.Popen(
                [sys.executable, __file__, str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            self.ports.append(port)
            self.procs.append(proc)

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index % len(self.ports)]}/e{index}"

    def ask(self, command: str) -> list[dict[str, Any]]:
        answers = []
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            answers.append(json.loads(proc.stdout.readline()))
        return answers

    def reset(self) -> dict[str, float]:
        """Start a new period; the summary of the one that ended."""
        return self.summary("reset")

    def summary(self, command: str = "report") -> dict[str, float]:
        """Hits per second over every site, and the worst site's gap percentiles."""
        answers = self.ask(command)
        rate = sum(a["hits"] / a["seconds"] for a in answers)
        worst = {k: max((a[k] or 0.0) for a in answers) for k in ("gap_p50", "gap_p99", "gap_max")}
        return {"hits_per_s": rate, **worst}

    def cpu_seconds(self) -> float:
        return sum(process_cpu(proc.pid) for proc in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)


def process_cpu(pid: int) -> float:
    """User plus system CPU seconds of a live process (from /proc, no psutil)."""
    import os

    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
