"""Mass failover on Route53: N services in one zone lose their primary site at once.

Runs ``trafficflip run`` as a subprocess against moto's Route53 server behind a proxy that
counts ChangeResourceRecordSets calls and enforces Route53's quota (5 calls/s per account;
calls beyond it are answered ``Throttling``). Every service has checks of its own (1 s,
fall 2). Prints, per fleet size: initial convergence (time, change calls) and the mass
failover (time from the outage to the last record moved, change calls), and throttled calls.

    python bench/mass_failover.py [--services 500 2000] [--quota 5] [--shared-checks]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet import Fleet  # noqa: E402
from tests.support import MotoServer  # noqa: E402


def run(services: int, quota: float, interval: float, fall: int, shared: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        moto = MotoServer(Path(tmp) / "moto.log")
        fleet = Fleet(
            Path(tmp),
            moto,
            services=services,
            calls_per_second=quota,
            interval=interval,
            fall=fall,
            shared_checks=shared,
        )
        try:
            started = time.monotonic()
            fleet.start()
            fleet.wait_serving("primary", timeout=600)
            initial_time = time.monotonic() - started
            initial_calls = fleet.proxy.changes
            outage = time.monotonic()
            fleet.primary.stop()
            fleet.wait_serving("dr", timeout=600)
            # To the answer of the change call that moved the last records, not to when the
            # harness's next look at the zone (a 4-to-14-page listing) saw them.
            assert fleet.proxy.last_change_done is not None
            failover_time = fleet.proxy.last_change_done - outage
            return {
                "services": services,
                "initial_s": initial_time,
                "initial_calls": initial_calls,
                "failover_s": failover_time,
                "failover_calls": fleet.proxy.changes - initial_calls,
                "throttled": fleet.proxy.throttled,
            }
        finally:
            fleet.close()
            moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--quota", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--fall", type=int, default=2)
    parser.add_argument(
        "--shared-checks",
        action="store_true",
        help="one check per site for every service (probed once), not one per service",
    )
    args = parser.parse_args()
    bound = args.fall * args.interval + 2
    checks = "one check per site, shared" if args.shared_checks else "each service its own checks"
    print(
        f"quota {args.quota:g} change calls/s, checks every {args.interval:g}s, fall {args.fall}, "
        f"{checks}"
    )
    print(f"target: failover within {bound:g}s in at most 4 calls, 0 throttled")
    header = (
        f"{'services':>8} {'initial':>9} {'calls':>6} {'failover':>9} {'calls':>6} {'throttled':>9}"
    )
    print(header)
    for count in args.services:
        r = run(count, args.quota, args.interval, args.fall, args.shared_checks)
        print(
            f"{count:>8} {r['initial_s']:>8.1f}s {r['initial_calls']:>6.0f} "
            f"{r['failover_s']:>8.1f}s {r['failover_calls']:>6.0f} {r['throttled']:>9.0f}"
        )


if __name__ == "__main__":
    main()
