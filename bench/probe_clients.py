"""CPU per HTTP probe for each client path, httpx and the lean probe, on asyncio and uvloop.

Each combination runs in a fresh process through the real ``Prober`` (timeouts, the in-flight
bound, the loop monitor, ``ProbeResult``), ``--probes`` probes with ``--in-flight`` at once, a
new connection each, against a loopback site in another process whose CPU is not counted.
CPU is user plus system time of the probing process (the kernel's loopback TCP work on our
side included); the best of ``--repeat`` runs is reported, as other load only adds to it.

    python bench/probe_clients.py [--probes 3000] [--in-flight 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.probe_sites import Sites  # noqa: E402

COMBINATIONS = [("httpx", "asyncio"), ("httpx", "uvloop"), ("lean", "asyncio"), ("lean", "uvloop")]


async def probe_many(url: str, path: str, probes: int, in_flight: int) -> dict[str, float]:
    from trafficflip.config.schema import HttpCheck
    from trafficflip.runtime.probes import Prober

    prober = Prober(http=path)  # type: ignore[arg-type]
    check = HttpCheck(type="http", url=url, body="ok")
    failed = 0

    async def lane(count: int) -> None:
        nonlocal failed
        for _ in range(count):
            failed += not (await prober.probe(check, 2.0)).ok

    await lane(10)  # imports and TLS contexts are start-up costs, not per-probe ones
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(lane(probes // in_flight) for _ in range(in_flight)))
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await prober.close()
    done = (probes // in_flight) * in_flight
    user = usage1.ru_utime - usage0.ru_utime
    system = usage1.ru_stime - usage0.ru_stime
    return {
        "cpu_ms": 1000 * (user + system) / done,
        "user_ms": 1000 * user / done,
        "system_ms": 1000 * system / done,
        "per_s": done / (wall1 - wall0),
        "failed": failed,
    }


def run_one(url: str, path: str, loop: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--one", path, loop, url]
    command += ["--probes", str(args.probes), "--in-flight", str(args.in_flight)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, loop, url = args.one
        if loop == "uvloop":
            import uvloop

            runner: object = uvloop.run
        else:
            runner = asyncio.run
        result = runner(probe_many(url, path, args.probes, args.in_flight))  # type: ignore[operator]
        print(json.dumps(result))
        return 0
    sites = Sites(1)
    try:
        print(
            f"CPU per HTTP probe: {args.probes} probes, {args.in_flight} in flight, new "
            f"connection each, best of {args.repeat}"
        )
        print("| client path | event loop | CPU per probe | user | system | probes/s | failed |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for path, loop in COMBINATIONS:
            runs = [run_one(sites.url(0), path, loop, args) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["cpu_ms"])
            print(
                f"| {path} | {loop} | {best['cpu_ms']:.3f} ms | {best['user_ms']:.3f} ms "
                f"| {best['system_ms']:.3f} ms | {best['per_s']:.0f} | {best['failed']:.0f} |",
                flush=True,
            )
    finally:
        sites.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
