"""Flip 1,000 services in one zone at once against a real ``named`` on loopback.

Prints the wall time from the decision (every service fails over to its standby) to all
RRsets updated and confirmed on the server, and how many UPDATE messages it took. The timed
path is the engine's: read the RRsets, render, diff, apply (which confirms the new serial
and RRsets). Run as root with BIND installed: ``.venv/bin/python bench/bind_flip.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.named import AVAILABLE, KEY_NAME, ZONE, Named  # noqa: E402
from trafficflip.config.schema import ServiceConfig  # noqa: E402
from trafficflip.decision.plan import plan_services, render  # noqa: E402
from trafficflip.providers.rfc2136 import Rfc2136Config, Rfc2136Provider  # noqa: E402

PRIMARY, STANDBY = "192.0.2.1", "198.51.100.1"
CHECK = [{"type": "tcp", "address": "127.0.0.1:9"}]


def services(count: int) -> list[ServiceConfig]:
    return [
        ServiceConfig.model_validate(
            {
                "name": f"svc{i:04d}",
                "provider": "bind",
                "zone": ZONE,
                "record": f"svc{i:04d}.{ZONE}",
                "type": "A",
                "ttl": 30,
                "sites": [
                    {"name": "primary", "targets": [PRIMARY], "checks": CHECK},
                    {"name": "standby", "targets": [STANDBY], "checks": CHECK},
                ],
            }
        )
        for i in range(count)
    ]


def count_updates(provider: Rfc2136Provider) -> list[Any]:
    """Keep the UPDATE messages sent (measured after the clock has stopped)."""
    sent: list[Any] = []
    exchange = provider.client.exchange

    async def counting(message: Any, endpoint: Any, what: str, **options: Any) -> Any:
        response = await exchange(message, endpoint, what, **options)
        if what.startswith("update"):
            sent.append(message)
        return response

    provider.client.exchange = counting  # type: ignore[method-assign]
    return sent


async def flip(provider: Rfc2136Provider, members: list[ServiceConfig], to: str) -> float:
    """Decision to all RRsets updated: the engine's read, diff and apply."""
    started = time.perf_counter()
    actual = await provider.read(members)
    shares = {to: 100}
    plan = plan_services((s, render(s, shares, weighted=False), actual[s.name]) for s in members)
    receipt = await provider.apply(plan)
    elapsed = time.perf_counter() - started
    assert receipt is not None and receipt.in_sync, receipt
    assert plan.count("update") == len(members), plan.summary
    return elapsed


async def scenario(named: Named, count: int) -> tuple[float, float, list[Any]]:
    """A warm flip (the provider read the zone at its last reconcile, as a running engine
    has) and then a cold one (a fresh provider that has never read the zone)."""
    members = services(count)
    warm = provider(named)
    await warm.read(members)
    sent = count_updates(warm)
    warm_time = await flip(warm, members, "standby")
    cold_time = await flip(provider(named), members, "primary")
    return warm_time, cold_time, sent


def provider(named: Named) -> Rfc2136Provider:
    tsig = {"name": KEY_NAME, "secret": named.secret}
    config = Rfc2136Config(type="rfc2136", server=named.address, tsig=tsig)  # type: ignore[arg-type]
    return Rfc2136Provider.create("bind", config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    if not AVAILABLE:
        sys.exit("needs /usr/sbin/named and root")
    records = [f"svc{i:04d} 30 IN A {PRIMARY}" for i in range(args.services)]
    with tempfile.TemporaryDirectory() as tmp:
        named = Named(Path(tmp), {ZONE: records}).start()
        try:
            warm, cold, sent = asyncio.run(scenario(named, args.services))
            assert named.values(f"svc{args.services - 1:04d}.{ZONE}", "A") == {PRIMARY}
        finally:
            named.stop()
    sizes = ", ".join(f"{len(m.to_wire())} bytes" for m in sent)
    print(f"flipped {args.services} services in one zone (BIND on loopback, TSIG hmac-sha256)")
    print(f"  decision -> all RRsets updated: {warm * 1000:.0f} ms wall time")
    print(f"  UPDATE messages: {len(sent)} ({sizes})")
    print(
        f"  cold (a provider that never read the zone: one query per RRset): {cold * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
