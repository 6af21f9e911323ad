"""A wall-clock step (NTP, a resumed VM) neither stalls probes nor the liveness tick.

``trafficflip run`` runs under Debian's libfaketime with its wall clock read from a file we
rewrite while it runs; its monotonic clock is left alone, as a real NTP step leaves it. After
the step, a killed primary is still failed over within fall x interval + 2 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, Service
from tests.support import MotoServer, wait_until

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FAILOVER_BOUND = FALL * INTERVAL + 2.0


@pytest.fixture
def clock_file(tmp_path: Path) -> Path:
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} missing: apt-get install faketime (make system-packages)")
    path = tmp_path / "faketime"
    path.write_text("+0\n")
    return path


@pytest.fixture
def stepped(tmp_path: Path, moto_server: MotoServer, clock_file: Path) -> Iterator[Service]:
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),
        # Re-read the file at most once a second: with FAKETIME_NO_CACHE=1 every time() call
        # reads it (22 us instead of 0.7 us here, monotonic() 14x slower too), which slows the
        # whole service, not just its clock. The test waits until the step shows anyway.
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # Debian builds libfaketime with its "monotonic fix" on, which misjudges the timed
        # waits on CPython's GIL (a CLOCK_MONOTONIC condition variable): a busy thread then
        # held the event loop off for up to 0.6 s, and failovers took 0.3 to 4 s with no
        # step at all. Off, the GIL hands over as without libfaketime (0.45 s failovers).
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
    }
    running = Service(tmp_path, moto_server, extra_env=env)
    running.start()
    try:
        wait_until(running.answering, timeout=30, what="the API")
        wait_until(lambda: running.weights() == PRIMARY, timeout=20, what="initial weights")
        yield running
    finally:
        running.close()


def wall_clock_of(service: Service) -> float:
    """The service's own wall clock, as its API stamps responses (RFC 7231 Date header)."""
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(service.get("/healthz").headers["date"]).timestamp()


@pytest.mark.parametrize("step", ["-120", "+3600"], ids=["back-120s", "forward-1h"])
def test_failover_after_a_wall_clock_step(stepped: Service, clock_file: Path, step: str) -> None:
    clock_file.write_text(f"{step}\n")
    wait_until(
        lambda: abs(wall_clock_of(stepped) - time.time() - int(step)) < 5,
        timeout=5,
        what=f"the service's wall clock stepped {step}s",
    )
    # Probes keep running on the monotonic clock: the primary is still seen up afterwards.
    probes_before = stepped.primary.requests
    wait_until(lambda: stepped.primary.requests >= probes_before + 3, timeout=3, what="probes")
    assert stepped.get("/healthz").status_code == 200

    stepped.primary.stop()
    killed = time.monotonic()
    wait_until(
        lambda: stepped.weights() == STANDBY, timeout=FAILOVER_BOUND + 5, what="the failover"
    )
    elapsed = time.monotonic() - killed
    assert elapsed <= FAILOVER_BOUND, (
        f"failover took {elapsed:.1f}s > {FAILOVER_BOUND:.1f}s\n{stepped.output()[-3000:]}"
    )
    response = stepped.get("/healthz")
    assert response.status_code == 200, response.text
    assert stepped.process is not None and stepped.process.alive(), stepped.output()
    assert os.environ.get("LD_PRELOAD") is None  # only the service runs under libfaketime
