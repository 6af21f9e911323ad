"""A probe worker process: probes its shard of the checks and streams the results to stdout.

Started by ``ProbeWorkers`` as ``python -m trafficflip.runtime.probe_worker``. Its first stdin
line is the shard (JSON: log settings and ``[index, check, health]`` triples); the checks come
through the pipe, never argv, so header secrets stay out of ``ps``. Stdin then stays open:
end-of-file means the parent is gone, and the worker exits. Each result is one line,
``index ok inconclusive latency at reason`` separated by tabs; ``at`` is ``time.monotonic()``,
one system-wide clock on Linux, so the engine compares it with its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import TypeAdapter

from trafficflip.config.schema import Check, HealthConfig
from trafficflip.decision.model import ProbeResult
from trafficflip.logs import setup_logging
from trafficflip.runtime import eventloop
from trafficflip.runtime.memory import freeze_startup_objects
from trafficflip.runtime.probe_scheduler import MonotonicScheduler
from trafficflip.runtime.probes import Prober

# Results wait this long to share one pipe write: a few ms of a 1 s interval, far fewer syscalls.
FLUSH_DELAY = 0.005
MAX_SHARD = 1 << 30


def encode(index: int, result: ProbeResult) -> str:
    reason = result.reason.replace("\t", " ").replace("\n", " ")
    return (
        f"{index}\t{int(result.ok)}\t{int(result.inconclusive)}\t"
        f"{result.latency:.6f}\t{result.at:.6f}\t{reason}\n"
    )


def decode(line: str) -> tuple[int, ProbeResult]:
    index, ok, inconclusive, latency, at, reason = line.rstrip("\n").split("\t", 5)
    result = ProbeResult(ok == "1", reason, float(latency), float(at), inconclusive == "1")
    return int(index), result


class ResultPipe:
    """Buffers encoded results and writes them to stdout in batches."""

    def __init__(self, writer: asyncio.WriteTransport) -> None:
        self._writer = writer
        self._buffer: list[str] = []
        self._loop = asyncio.get_running_loop()

    def send(self, index: int, result: ProbeResult) -> None:
        if not self._buffer:
            self._loop.call_later(FLUSH_DELAY, self._flush)
        self._buffer.append(encode(index, result))

    def _flush(self) -> None:
        data, self._buffer = "".join(self._buffer), []
        self._writer.write(data.encode())


def _job(
    prober: Prober, pipe: ResultPipe, index: int, check: Check, timeout: float
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        pipe.send(index, await prober.probe(check, timeout))

    return run


async def serve(shard: dict[str, Any], stdin: asyncio.StreamReader) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
    pipe = ResultPipe(transport)
    prober = Prober()
    checks: TypeAdapter[Check] = TypeAdapter(Check)
    scheduler = MonotonicScheduler()
    jobs = []
    for index, check_data, health_data in shard["jobs"]:
        check, health = checks.validate_python(check_data), HealthConfig(**health_data)
        run = _job(prober, pipe, index, check, health.timeout)
        jobs.append((f"probe:{index}", health.interval, run))
    scheduler.add_spread(jobs)
    freeze_startup_objects()  # short collector pauses: probes stay on time
    scheduler.start()
    try:
        while await stdin.read(4096):
            pass  # the parent never writes again; end-of-file means it is gone
    finally:
        scheduler.stop()
        await prober.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    # The shard is one JSON line: thousands of checks are megabytes, past the 64 KiB default.
    stdin = asyncio.StreamReader(limit=MAX_SHARD)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    shard = json.loads(await stdin.readline())
    setup_logging(shard.get("log_level", "INFO"), shard.get("log_format", "text"))
    await serve(shard, stdin)


if __name__ == "__main__":
    eventloop.run(main())
