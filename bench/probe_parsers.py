"""CPU per HTTP probe for each way of reading the answer: asyncio streams or a Protocol, parsed
by h11 (pure Python) or by httptools (llhttp, C). The measurement behind the lean probe's design.

Probes are paced at ``--rate`` per second (as the service paces them, not back to back), each a
``GET`` on a new loopback connection to a site in another process (``bench/probe_sites.py``),
on uvloop. Each variant runs in a fresh process; CPU is that process's user plus system time,
best of ``--repeat`` runs. Bounded: ``--rate`` x ``--seconds`` probes per run.

    python bench/probe_parsers.py [--rate 1000] [--seconds 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import httptools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.probe_sites import Sites  # noqa: E402

Probe = Callable[[str, int, str], Awaitable[int]]


def request(host: str, path: str) -> h11.Request:
    return h11.Request(method="GET", target=path, headers=[("host", host), ("connection", "close")])


async def streams_h11(host: str, port: int, path: str) -> int:
    """What the lean probe was first: h11's state machine over asyncio streams."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h11.Connection(h11.CLIENT)
        writer.write(conn.send(request(host, path)) + conn.send(h11.EndOfMessage()))
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status
    finally:
        writer.close()


class _Answer:
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.parser.get_status_code())


async def streams_httptools(host: str, port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        answer = _Answer(asyncio.get_running_loop().create_future())
        writer.write(payload(host, path))
        while not answer.done.done():
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            answer.parser.feed_data(data)
        return answer.done.result()
    finally:
        writer.close()


class _H11Exchange(asyncio.Protocol):
    def __init__(self, host: str, path: str, done: asyncio.Future[int]) -> None:
        self.done, self.conn, self.status = done, h11.Connection(h11.CLIENT), 0
        self.request = request(host, path)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(self.conn.send(self.request) + self.conn.send(h11.EndOfMessage()))

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while not self.done.done():
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.done.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed"))


async def protocol_h11(host: str, port: int, path: str) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _H11Exchange(host, path, done), host, port)
    try:
        return await done
    finally:
        transport.close()


class _Exchange(asyncio.Protocol):
    def __init__(self, data: bytes, answer: _Answer) -> None:
        self.data, self.answer = data, answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.data)  # type: ignore[attr-defined]

    def data_received(self, chunk: bytes) -> None:
        self.answer.parser.feed_data(chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done.done():
            self.answer.done.set_exception(exc or ConnectionError("closed"))


async def protocol_httptools(host: str, port: int, path: str) -> int:
    """What the lean probe is (trafficflip/runtime/probe_http.py), stripped to the parse."""
    loop = asyncio.get_running_loop()
    answer = _Answer(loop.create_future())
    data = payload(host, path)
    transport, _ = await loop.create_connection(lambda: _Exchange(data, answer), host, port)
    try:
        return await answer.done
    finally:
        transport.close()


@functools.cache
def payload(host: str, path: str) -> bytes:
    """The request's bytes, written by h11 once per check as the lean probe does."""
    conn = h11.Connection(h11.CLIENT)
    return conn.send(request(host, path)) + conn.send(h11.EndOfMessage())


VARIANTS: dict[str, Probe] = {
    "asyncio streams + h11": streams_h11,
    "asyncio streams + httptools": streams_httptools,
    "Protocol + h11": protocol_h11,
    "Protocol + httptools (the lean probe)": protocol_httptools,
}


async def paced(probe: Probe, port: int, rate: float, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    count, failed = int(rate * seconds), 0
    running: set[asyncio.Task[None]] = set()

    async def one(index: int) -> None:
        nonlocal failed
        try:
            async with asyncio.timeout(2.0):
                failed += await probe("127.0.0.1", port, f"/e{index % 1000}") != 200
        except (OSError, TimeoutError, h11.ProtocolError, httptools.HttpParserError):
            failed += 1

    await one(0)  # imports and the first connection are start-up costs
    usage0, start = resource.getrusage(resource.RUSAGE_SELF), loop.time()
    for index in range(count):
        wait = start + index / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        task = loop.create_task(one(index))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime
    return {"cpu_ms": 1000 * cpu / count, "core": cpu / (loop.time() - start), "failed": failed}


def run_one(name: str, port: int, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--one", name, str(port)]
    command += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop

        name, port = args.one
        result = uvloop.run(paced(VARIANTS[name], int(port), args.rate, args.seconds))
        print(json.dumps(result))
        return 0
    print(
        f"CPU per HTTP probe: {args.rate:.0f} probes/s for {args.seconds:g} s, new connection "
        f"each, uvloop, best of {args.repeat}"
    )
    print("| reading the answer | CPU per probe | CPU at this rate (% of a core) | failed |")
    print("| --- | --- | --- | --- |")
    sites = Sites(1)
    try:
        port = int(sites.url(0).rsplit(":", 1)[1].split("/")[0])
        for name in VARIANTS:
            best = min((run_one(name, port, args) for _ in range(args.repeat)), key=_cpu)
            print(
                f"| {name} | {best['cpu_ms']:.3f} ms | {100 * best['core']:.0f} % "
                f"| {best['failed']:.0f} |",
                flush=True,
            )
    finally:
        sites.close()
    return 0


def _cpu(result: dict[str, float]) -> float:
    return result["cpu_ms"]


if __name__ == "__main__":
    sys.exit(main())
