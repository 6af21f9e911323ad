"""Probe engine: N HTTP endpoints at interval I under the real scheduler, prober and engine.

The endpoints are paths on a minimal keep-alive HTTP/1.1 server in another process on
loopback, so its CPU is not counted. Prints probes per second achieved, scheduling lag
(actual start minus due time) p50/p99, CPU seconds per 1,000 probes of this process and its
peak RSS. Bounded: it stops by itself after the warm-up plus the measured duration.

    python bench/probe_engine.py [--endpoints 1000] [--interval 1] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trafficflip.backend.testing import MemoryConfig, MemoryProvider  # noqa: E402
from trafficflip.config.loader import Config, ProviderSpec, load_config  # noqa: E402
from trafficflip.runtime.engine import Engine  # noqa: E402
from trafficflip.runtime.probes import Prober  # noqa: E402
from trafficflip.runtime.scheduler import Runner  # noqa: E402
from trafficflip.runtime.state import open_store  # noqa: E402

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def serve(port: int, extra_ports: int) -> None:
    """Answer every request on a connection with 200 ok (keep-alive, no parsing beyond it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    # TCP checks are told apart by address: one listening port each.
    extra = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(extra_ports)]
    ports = [s.sockets[0].getsockname()[1] for s in extra]
    print("ready " + " ".join(map(str, ports)), flush=True)
    async with server:
        await server.serve_forever()


def start_server(extra_ports: int) -> tuple[subprocess.Popen[str], int, list[int]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--extra-ports", str(extra_ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    assert words[0] == "ready"
    return proc, port, [int(w) for w in words[1:]]


def bench_config(
    endpoints: int, interval: float, port: int, tcp_ports: list[int], folder: str, kind: str
) -> Config:
    def check(i: int) -> dict[str, str]:
        if kind == "tcp":
            return {"type": "tcp", "address": f"127.0.0.1:{tcp_ports[i]}"}
        return {"type": "http", "url": f"http://127.0.0.1:{port}/e{i}"}

    services = [
        {
            "name": f"s{i}",
            "provider": "mem",
            "zone": "bench.example.",
            "record": f"s{i}.bench.example.",
            "type": "A",
            "ttl": 1,
            "health": {
                "interval": interval,
                "timeout": min(0.5, interval / 2),
                "fall": 3,
                "rise": 2,
            },
            "sites": [{"name": "a", "targets": ["192.0.2.1"], "checks": [check(i)]}],
        }
        for i in range(endpoints)
    ]
    loaded = load_config(
        data={
            "state": f"sqlite:///{folder}/state.db",
            "providers": {"mem": {"type": "route53"}},
            "services": services,
        }
    )
    return Config(loaded.settings, {"mem": ProviderSpec("mem", MemoryProvider, MemoryConfig())})


class Counter:
    def __init__(self) -> None:
        self.probes = 0
        self.failed = 0
        self.inconclusive = 0


async def measure(config: Config, args: argparse.Namespace) -> dict[str, float]:
    store = open_store(config.settings.state)
    engine = Engine(config.services, store, {"mem": MemoryProvider()})
    runner = Runner(engine, Prober(), reconcile_interval=30)
    counter = Counter()
    observe = engine.observe

    def counted(key: str, result: object) -> None:
        counter.probes += 1
        if getattr(result, "inconclusive", False):
            counter.inconclusive += 1
        elif not getattr(result, "ok", True):
            counter.failed += 1
        observe(key, result)  # type: ignore[arg-type]

    engine.observe = counted  # type: ignore[method-assign]
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(args.warmup)
    runner.stats.lags.clear()
    runner.stats.missed = runner.stats.overrun = 0
    probes0, failed0, unsure0 = counter.probes, counter.failed, counter.inconclusive
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.sleep(args.duration)
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    probes = counter.probes - probes0
    lags = sorted(runner.stats.lags)
    runner.stop()
    await task
    store.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "probes_per_s": probes / (wall1 - wall0),
        "failed": counter.failed - failed0,
        "inconclusive": counter.inconclusive - unsure0,
        "lag_p50_ms": 1000 * statistics.median(lags),
        "lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))],
        "lag_max_ms": 1000 * lags[-1],
        "cpu_s_per_1000": 1000 * cpu / max(probes, 1),
        "cpu_util": cpu / (wall1 - wall0),
        "peak_rss_mb": usage1.ru_maxrss / 1024,
        "missed": runner.stats.missed,
        "overrun": runner.stats.overrun,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--check", choices=["http", "tcp"], default="http")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--extra-ports", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.extra_ports))
        return 0
    logging.basicConfig(level=logging.ERROR)  # the figures, not one line per missed run
    server, port, tcp_ports = start_server(args.endpoints if args.check == "tcp" else 0)
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = bench_config(
                args.endpoints, args.interval, port, tcp_ports, folder, args.check
            )
            result = asyncio.run(measure(config, args))
    finally:
        server.terminate()
        server.wait(timeout=10)
    target = args.endpoints / args.interval
    print(
        f"probe engine: {args.endpoints} {args.check.upper()} endpoints every {args.interval}s "
        f"(target {target:.0f} probes/s), {args.duration:.0f}s measured after "
        f"{args.warmup:.0f}s warm-up"
    )
    print(
        f"  probes/s achieved   {result['probes_per_s']:8.1f}  (failed: {result['failed']:.0f}, "
        f"inconclusive because the prober was overloaded: {result['inconclusive']:.0f})"
    )
    print(
        f"  scheduling lag      p50 {result['lag_p50_ms']:.1f} ms  p99 "
        f"{result['lag_p99_ms']:.1f} ms  max {result['lag_max_ms']:.1f} ms"
    )
    print(
        f"  CPU per 1000 probes {result['cpu_s_per_1000']:8.3f} s  "
        f"(process CPU use {100 * result['cpu_util']:.0f}% of one core)"
    )
    print(f"  peak RSS            {result['peak_rss_mb']:8.1f} MB")
    print(f"  missed runs {result['missed']}, overrunning runs {result['overrun']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
