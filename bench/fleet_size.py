"""How many services one instance carries: the service's own cost per service, probes aside.

Runs ``trafficflip run`` on N Route53 services in one zone (moto behind the counting proxy of
``tests/fleet.py``), every service checking the same two URLs, so the probes are a constant
2 per interval and what grows with N is trafficflip's own work: the 1 s tick over every
service, the status snapshot and the API, the state, the memory. Prints, per fleet size:
start-up to every record written, the idle CPU of the whole process over ``--duration``
seconds afterwards, its resident memory, and the time to answer ``/api/v1/services`` and
``/metrics``. Bounded: start-up limited to ``--limit`` seconds, then a fixed measurement.

    python bench/fleet_size.py [--services 1000 5000 10000] [--duration 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.probe_sites import process_cpu  # noqa: E402
from tests.fleet import Fleet  # noqa: E402
from tests.support import MotoServer  # noqa: E402


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_get(url: str) -> float:
    started = time.perf_counter()
    httpx.get(url, timeout=60).raise_for_status()
    return time.perf_counter() - started


def run(services: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        moto = MotoServer(Path(tmp) / "moto.log")
        fleet = Fleet(
            Path(tmp),
            moto,
            services=services,
            calls_per_second=args.quota,
            interval=5.0,
            fall=2,
            shared_checks=True,
            api=True,
        )
        try:
            started = time.monotonic()
            fleet.start()
            fleet.wait_serving("primary", timeout=args.limit)
            startup = time.monotonic() - started
            assert fleet.process is not None and fleet.api_url is not None
            pid = fleet.process.pid
            time.sleep(5.0)  # bounded: the last start-up writes and snapshot settle
            cpu0, wall0 = process_cpu(pid), time.monotonic()
            time.sleep(args.duration)  # bounded: the measured idle spell
            cpu1, wall1 = process_cpu(pid), time.monotonic()
            api = min(timed_get(f"{fleet.api_url}/api/v1/services") for _ in range(3))
            metrics = min(timed_get(f"{fleet.api_url}/metrics") for _ in range(3))
            return {
                "startup_s": startup,
                "cpu_percent": 100 * (cpu1 - cpu0) / (wall1 - wall0),
                "rss_mib": resident_mib(pid),
                "api_s": api,
                "metrics_s": metrics,
                "calls": fleet.proxy.changes,
            }
        finally:
            fleet.close()
            moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--quota", type=float, default=5.0)
    parser.add_argument("--limit", type=float, default=600.0)
    args = parser.parse_args()
    print(
        f"one instance, N Route53 services sharing 2 HTTP checks at 5 s, quota {args.quota:g} "
        f"calls/s, idle CPU over {args.duration:g} s"
    )
    print(
        "| services | start-up to all written | change calls | idle CPU (% of a core) "
        "| resident memory | /api/v1/services | /metrics |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for count in args.services:
        r = run(count, args)
        print(
            f"| {count:,} | {r['startup_s']:.1f} s | {r['calls']:.0f} | {r['cpu_percent']:.0f} % "
            f"| {r['rss_mib']:.0f} MiB | {1000 * r['api_s']:.0f} ms "
            f"| {1000 * r['metrics_s']:.0f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    main()
