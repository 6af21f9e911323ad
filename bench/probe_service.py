"""The whole ``trafficflip run`` probing N HTTP checks at 1 s, as a subprocess.

Services are Route53 records in moto (server mode); each has a primary and a dr site whose
checks are paths on cheap loopback sites in their own processes (``bench/probe_sites.py``),
which count the probes that reach them and the gaps between two probes of one check. The CPU
is the service's process and its probe workers, read from /proc before and after the measured
window. Bounded: warm-up plus the measured duration, then everything started is stopped.

    python bench/probe_service.py [--checks 1000] [--workers 1] [--duration 20]
    python bench/probe_service.py --checks 5000 --curve 1,2,4   (the worker scaling curve)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.probe_sites import Sites, process_cpu  # noqa: E402
from tests.support import MotoServer, Process, free_port  # noqa: E402

MAX_SERVICES = 500
WARM_LIMIT = 90.0


def service_config(args: argparse.Namespace, sites: Sites, folder: Path) -> dict[str, Any]:
    services = min(MAX_SERVICES, args.checks // 2)
    per_site = args.checks // (2 * services)

    def site(name: str, address: str, first: int) -> dict[str, Any]:
        checks = [{"type": "http", "url": sites.url(first + k)} for k in range(per_site)]
        return {"name": name, "targets": [address], "checks": checks}

    return {
        "state": f"sqlite:///{folder / 'state.db'}",
        "log_level": "warning",
        "probe_workers": args.workers,
        "providers": {"aws": {"type": "route53"}},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "services": [
            {
                "name": f"s{i}",
                "provider": "aws",
                "zone": "bench.example.",
                "record": f"s{i}.bench.example.",
                "type": "A",
                "ttl": 60,
                "health": {"interval": args.interval, "timeout": 0.5, "fall": 2, "rise": 2},
                "sites": [
                    site("primary", "192.0.2.1", 2 * i * per_site),
                    site("dr", "192.0.2.2", (2 * i + 1) * per_site),
                ],
            }
            for i in range(services)
        ],
    }


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (the probe workers)."""
    total = process_cpu(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(process_cpu(int(child)) for child in children)


def measure(args: argparse.Namespace, workers: int) -> dict[str, float]:
    args.workers = workers
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        moto = MotoServer(folder / "moto.log")
        sites = Sites(args.sites)
        service: Process | None = None
        try:
            route53 = boto3.client("route53", region_name="us-east-1", **_aws(moto))
            route53.create_hosted_zone(Name="bench.example.", CallerReference="bench")
            config = folder / "trafficflip.yaml"
            config.write_text(yaml.safe_dump(service_config(args, sites, folder)))
            service = Process(
                [sys.executable, "-m", "trafficflip", "run", "--config", str(config)],
                env=moto.env(),
                log=folder / "run.log",
                cwd=ROOT,
            )
            target = args.checks / args.interval

            def warm() -> bool:
                assert service is not None and service.alive(), service and service.output()
                rate = sites.reset()["hits_per_s"]
                if args.verbose:
                    print(f"  warming up: {rate:.0f} probes/s", file=sys.stderr)
                return rate > 0.5 * target

            sites.reset()
            # Start-up (every service's first convergence) is not measured: wait for half the
            # target rate, or WARM_LIMIT seconds when an overloaded service never gets there.
            deadline = time.monotonic() + WARM_LIMIT
            while not warm() and time.monotonic() < deadline:
                time.sleep(1.0)
            time.sleep(args.warmup)  # bounded: the warm-up is a fixed number of seconds
            sites.reset()
            cpu0, wall0 = tree_cpu(service.pid), time.monotonic()
            sites_cpu0 = sites.cpu_seconds()
            time.sleep(args.duration)
            cpu1, wall1 = tree_cpu(service.pid), time.monotonic()
            sites_cpu1 = sites.cpu_seconds()
            summary = sites.summary()
            assert service.alive(), service.output()
        finally:
            if service is not None:
                service.stop()
            sites.close()
            moto.stop()
    seconds = wall1 - wall0
    return {
        "workers": workers,
        "probes_per_s": summary["hits_per_s"],
        "gap_p50": summary["gap_p50"],
        "gap_p99": summary["gap_p99"],
        "gap_max": summary["gap_max"],
        "cpu_percent": 100 * (cpu1 - cpu0) / seconds,
        "cpu_ms_per_probe": 1000 * (cpu1 - cpu0) / max(summary["hits_per_s"] * seconds, 1),
        "sites_cpu_percent": 100 * (sites_cpu1 - sites_cpu0) / seconds,
    }


def _aws(moto: MotoServer) -> dict[str, str]:
    env = moto.env()
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--curve", help="comma-separated worker counts, e.g. 1,2,4")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--sites", type=int, default=3, help="site processes")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.curve.split(",")] if args.curve else [args.workers]
    target = args.checks / args.interval
    print(
        f"trafficflip run: {args.checks} HTTP checks every {args.interval:g}s (target "
        f"{target:.0f} probes/s), {args.duration:.0f}s measured after warm-up; "
        f"{os.cpu_count()} cores"
    )
    print(
        "| probe workers | probes/s reaching the sites | gap p50 | gap p99 | gap max "
        "| CPU of trafficflip run (% of a core) | CPU per probe | sites' CPU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for count in counts:
        r = measure(args, count)
        print(
            f"| {count} | {r['probes_per_s']:.0f} | {r['gap_p50']:.3f} s | {r['gap_p99']:.3f} s "
            f"| {r['gap_max']:.3f} s | {r['cpu_percent']:.0f} % | {r['cpu_ms_per_probe']:.3f} ms "
            f"| {r['sites_cpu_percent']:.0f} % |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
