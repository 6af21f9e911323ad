"""A site outage moves a fleet at once, in few Route53 calls and within the call quota."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fleet import Fleet
from tests.support import MotoServer

SERVICES, QUOTA, INTERVAL, FALL = 200, 2.0, 2.0, 2


def test_a_fleet_fails_over_in_few_calls_without_throttling(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    fleet = Fleet(
        tmp_path,
        moto_server,
        services=SERVICES,
        calls_per_second=QUOTA,
        interval=INTERVAL,
        fall=FALL,
    )
    try:
        fleet.start()
        fleet.wait_serving("primary", timeout=60)
        initial = fleet.proxy.changes
        assert initial <= 4, initial
        outage = time.monotonic()
        fleet.primary.stop()
        fleet.wait_serving("dr", timeout=60)
        assert fleet.proxy.last_change_done is not None
        took = fleet.proxy.last_change_done - outage
        calls = fleet.proxy.changes - initial
        assert calls <= 4, calls
        assert fleet.proxy.throttled == 0
        # The time is a benchmark figure (bench/mass_failover.py, docs/performance.md): here
        # it is only printed, since moto's speed on a shared machine is not trafficflip's.
        print(f"mass failover of {SERVICES} services: {took:.1f}s, {calls} change calls")
    finally:
        fleet.close()
