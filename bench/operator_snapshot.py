"""What the operator surface costs the event loop at fleet scale.

Builds an engine with the in-memory provider and N services (two sites each, all probed up,
every service converged, then a mass failover so each has journal entries), and times:

- a full snapshot build, and the longest slice of a sliced rebuild (the longest time the
  event loop waits behind the snapshot);
- serializing ``/api/v1/services`` (journal 10 and 50), done in a thread by the API;
- rendering ``/metrics`` (also in a thread) and the status page.

    python bench/operator_snapshot.py [--services 500] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trafficflip.backend.testing import MemoryConfig, MemoryProvider  # noqa: E402
from trafficflip.config.loader import Config, ProviderSpec, load_config  # noqa: E402
from trafficflip.decision.model import ProbeResult  # noqa: E402
from trafficflip.operations import snapshot as snapshot_module  # noqa: E402
from trafficflip.operations.metrics import Metrics  # noqa: E402
from trafficflip.operations.page import render_page  # noqa: E402
from trafficflip.operations.snapshot import SnapshotKeeper  # noqa: E402
from trafficflip.runtime.engine import Engine  # noqa: E402
from trafficflip.runtime.probes import Prober  # noqa: E402
from trafficflip.runtime.scheduler import Runner  # noqa: E402
from trafficflip.runtime.state import SqliteStateStore  # noqa: E402


def fleet(services: int) -> Config:
    data: dict[str, Any] = {
        "providers": {"mem": {"type": "route53"}},
        "services": [
            {
                "name": f"svc{i:03d}",
                "provider": "mem",
                "zone": "example.com.",
                "record": f"svc{i:03d}.example.com.",
                "type": "A",
                "ttl": 30,
                "health": {"interval": 1, "timeout": 0.5, "fall": 2, "rise": 2},
                "failback": {"stabilize": 60, "steps": [10, 50, 100], "step_duration": 60},
                "sites": [
                    {
                        "name": "primary",
                        "targets": ["192.0.2.10"],
                        # Each service its own check, as in a real fleet.
                        "checks": [{"type": "tcp", "address": f"127.0.0.1:{10000 + i}"}],
                    },
                    {
                        "name": "dr",
                        "targets": ["198.51.100.20"],
                        "checks": [{"type": "tcp", "address": f"127.0.0.2:{10000 + i}"}],
                    },
                ],
            }
            for i in range(services)
        ],
    }
    loaded = load_config(data=data)
    return Config(loaded.settings, {"mem": ProviderSpec("mem", MemoryProvider, MemoryConfig())})


def probe_all(engine: Engine, primary_ok: bool) -> None:
    for key in engine.jobs:
        ok = primary_ok or "127.0.0.2:" in key
        for _ in range(2):
            engine.observe(
                key, ProbeResult(ok, "ok" if ok else "connect refused", 0.001, engine.clock())
            )


def ms(values: list[float]) -> str:
    values = sorted(values)
    return f"median {statistics.median(values) * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms"


async def main(services: int, rounds: int) -> None:
    logging.disable(logging.CRITICAL)  # a mass failover logs a line per service
    engine = Engine(fleet(services), SqliteStateStore(":memory:"), {"mem": MemoryProvider()})
    runner = Runner(engine, Prober(), reconcile_interval=30)
    metrics = Metrics(engine, runner)
    keeper = SnapshotKeeper(engine)
    metrics.read_from(lambda: keeper.current)
    probe_all(engine, True)
    await engine.converge(list(engine.services))
    probe_all(engine, False)
    await engine.converge(list(engine.services))
    keeper.seed()
    full, slices = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        keeper.build_now()
        full.append(time.perf_counter() - start)
        names = list(engine.services)
        step = snapshot_module.SLICE_SERVICES
        for first in range(0, len(names), step):
            start = time.perf_counter()
            [keeper.view(n) for n in names[first : first + step]]
            slices.append(time.perf_counter() - start)
    snap = keeper.current = keeper.build_now()
    json10, json50, scrape, page = [], [], [], []
    for _ in range(rounds):
        fresh = keeper.build_now()
        for journal, into in ((10, json10), (50, json50)):
            start = time.perf_counter()
            fresh.services_json(journal)
            into.append(time.perf_counter() - start)
        start = time.perf_counter()
        metrics.exposition()
        scrape.append(time.perf_counter() - start)
        start = time.perf_counter()
        render_page(fresh, 2.0)
        page.append(time.perf_counter() - start)
    failed = snap.summary.phases["failed over"]
    print(f"services: {services} (failed over in the snapshot: {failed}), rounds: {rounds}")
    print(f"full snapshot build:            {ms(full)}")
    print(f"one slice of {snapshot_module.SLICE_SERVICES} services (loop held): {ms(slices)}")
    print(f"/api/v1/services?journal=10:    {ms(json10)}  (in a thread)")
    print(f"/api/v1/services?journal=50:    {ms(json50)}  (in a thread)")
    print(f"/metrics:                       {ms(scrape)}  (in a thread)")
    print(f"status page render:             {ms(page)}")
    print(
        f"/api/v1/services?journal=50 size: {len(snap.services_json(50)) / 1024:.0f} KiB; "
        f"page: {len(render_page(snap, 2.0)[0]) / 1024:.0f} KiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.rounds))
