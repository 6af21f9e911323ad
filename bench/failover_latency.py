"""Failover latency: from the moment the serving site stops answering to the Route53 call returning.

Runs the real service (scheduler, prober, engine, Route53 adapter) in-process against moto's
Route53 server on loopback and a loopback HTTP site, and breaks the site at random phases of
its probe schedule. Prints the distribution of

- total: outage -> provider call returned (the goal: fall x interval plus under 50 ms),
- own: the failing probe that crossed ``fall`` -> provider call returned (trafficflip's own
  time, including the read and the change call to the emulated Route53).

    python bench/failover_latency.py [--outages 20] [--interval 0.5] [--fall 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trafficflip.backend.provider import Receipt  # noqa: E402
from trafficflip.config.loader import load_config  # noqa: E402
from trafficflip.decision.model import Status  # noqa: E402
from trafficflip.decision.plan import Plan  # noqa: E402
from trafficflip.demo import DemoSite, local_route53  # noqa: E402
from trafficflip.runtime.engine import Engine  # noqa: E402
from trafficflip.runtime.probes import Prober  # noqa: E402
from trafficflip.runtime.scheduler import Runner  # noqa: E402
from trafficflip.runtime.state import open_store  # noqa: E402


class Timings:
    def __init__(self) -> None:
        self.detected: float | None = None
        self.applied: float | None = None
        self.to_dr = False


def instrument(engine: Engine, timings: Timings) -> None:
    """Record when the deciding probe result arrives and when the provider call returns."""
    observe, provider = engine.observe, engine.providers["aws"]
    apply = provider.apply

    def timed_observe(key: str, result: Any) -> None:
        before = engine.checks[key].status
        observe(key, result)
        if before is Status.UP and engine.checks[key].status is Status.DOWN:
            timings.detected = time.perf_counter()

    async def timed_apply(plan: Plan) -> Receipt | None:
        receipt = await apply(plan)
        if any(
            c.site == "dr" and c.after is not None and c.after.weight == 100 for c in plan.changes
        ):
            timings.applied = time.perf_counter()
        return receipt

    engine.observe = timed_observe  # type: ignore[method-assign]
    provider.apply = timed_apply  # type: ignore[method-assign]


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark: timed out")
        await asyncio.sleep(0.002)


async def outages(
    engine: Engine, runner: Runner, primary: DemoSite, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    timings = Timings()
    instrument(engine, timings)
    totals: list[float] = []
    owns: list[float] = []
    try:
        await wait_for(
            lambda: (
                engine.states["www"].members == ("primary",)
                and engine.states["www"].applied_at is not None
            )
        )
        for _ in range(args.outages):
            await asyncio.sleep(random.uniform(0, args.interval))  # a random phase
            timings.detected = timings.applied = None
            primary.healthy = False
            broken = time.perf_counter()
            await wait_for(lambda: timings.applied is not None)
            assert timings.detected is not None and timings.applied is not None
            totals.append(timings.applied - broken)
            owns.append(timings.applied - timings.detected)
            primary.healthy = True
            await wait_for(
                lambda: (
                    engine.states["www"].members == ("primary",)
                    and engine.states["www"].applied_at is not None
                )
            )
    finally:
        runner.stop()
    return totals, owns


def report(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return (
        f"{name:<6} min {ms[0]:7.1f} ms  p50 {statistics.median(ms):7.1f} ms  "
        f"p95 {p95:7.1f} ms  max {ms[-1]:7.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outages", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--fall", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto = local_route53("bench.example.")
    primary, dr = DemoSite(), DemoSite()
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            data={
                "state": f"sqlite:///{folder}/state.db",
                "providers": {"aws": {"type": "route53"}},
                "services": [
                    {
                        "name": "www",
                        "provider": "aws",
                        "zone": "bench.example.",
                        "record": "www.bench.example.",
                        "type": "A",
                        "ttl": 1,
                        "health": {
                            "interval": args.interval,
                            "timeout": args.interval / 2,
                            "fall": args.fall,
                            "rise": 1,
                        },
                        "failback": {"stabilize": 0, "steps": [100], "step_duration": 1},
                        "sites": [
                            {"name": n, "targets": [a], "checks": [{"type": "http", "url": s.url}]}
                            for n, a, s in (
                                ("primary", "192.0.2.10", primary),
                                ("dr", "198.51.100.20", dr),
                            )
                        ],
                    }
                ],
            }
        )
        store = open_store(config.settings.state)
        engine = Engine(
            config.services,
            store,
            {n: s.cls.create(n, s.config) for n, s in config.providers.items()},
        )
        runner = Runner(engine, Prober(), reconcile_interval=30)

        async def run() -> tuple[list[float], list[float]]:
            results = await asyncio.gather(runner.run(), outages(engine, runner, primary, args))
            return results[1]

        totals, owns = asyncio.run(run())
        store.close()
    primary.close()
    dr.close()
    moto.stop()
    budget = args.fall * args.interval
    print(
        f"failover latency over {args.outages} outages at random phases "
        f"(interval {args.interval}s, fall {args.fall}: fall x interval = {budget * 1000:.0f} ms)"
    )
    print(report("total", totals))
    print(report("own", owns))
    over = max(totals) - budget
    print(f"worst total - fall x interval = {over * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
