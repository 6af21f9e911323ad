"""The rfc2136 provider against a real ``named`` on loopback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.named import AVAILABLE, KEY_NAME, ZONE, Named
from trafficflip.model import Answer
from trafficflip.plan import Plan, plan_services, render
from trafficflip.providers.rfc2136 import Rfc2136Config, Rfc2136Provider
from trafficflip.settings import ServiceConfig

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="needs /usr/sbin/named and root")

CHECK = [{"type": "tcp", "address": "127.0.0.1:9"}]
TARGETS = {
    "A": (["192.0.2.1", "192.0.2.2"], ["198.51.100.1"]),
    "AAAA": (["2001:db8::1"], ["2001:db8::2", "2001:db8::3"]),
    "CNAME": (["primary.example.net."], ["standby.example.net."]),
}


@pytest.fixture
def named(tmp_path: Path) -> Iterator[Named]:
    zones = {ZONE: ["taken IN CNAME elsewhere.example.net."], "broken.test.": ["@ IN BOGUS x"]}
    server = Named(tmp_path / "named", zones).start()
    yield server
    server.stop()


def provider_for(
    named: Named, *, secret: str | None = None, key: str = KEY_NAME, tsig: bool = True, **extra: Any
) -> Rfc2136Provider:
    raw: dict[str, Any] = {"type": "rfc2136", "server": named.address, "timeout": "1s", **extra}
    if tsig:
        raw["tsig"] = {"name": key, "secret": secret or named.secret}
    return Rfc2136Provider.create("bind", Rfc2136Config(**raw))


@pytest.fixture
def provider(named: Named) -> Rfc2136Provider:
    return provider_for(named)


def service(
    name: str = "www", rtype: str = "A", *, zone: str = ZONE, record: str | None = None
) -> ServiceConfig:
    primary, standby = TARGETS[rtype]
    return ServiceConfig.model_validate({
        "name": name, "provider": "bind", "zone": zone, "record": record or f"{name}.{zone}",
        "type": rtype, "ttl": 30,
        "failback": {"steps": [100] if rtype == "CNAME" else [50, 100]},
        "sites": [
            {"name": "primary", "targets": primary, "checks": CHECK},
            {"name": "standby", "targets": standby, "checks": CHECK},
        ],
    })  # fmt: skip


async def converge(
    provider: Rfc2136Provider, services: Sequence[ServiceConfig], shares: dict[str, int]
) -> Plan:
    """What the engine does: read, render the shares, diff, apply."""
    actual = await provider.read(services)
    plan = plan_services((s, render(s, shares, weighted=False), actual[s.name]) for s in services)
    await provider.apply(plan)
    return plan


@pytest.mark.parametrize("rtype", ["A", "AAAA", "CNAME"])
async def test_apply_then_read_round_trip(
    named: Named, provider: Rfc2136Provider, rtype: str
) -> None:
    svc = service(rtype=rtype)
    primary, standby = TARGETS[rtype]
    assert await provider.read([svc]) == {"www": ()}

    plan = await converge(provider, [svc], {"primary": 100})
    assert plan.summary == "Creates=1, Updates=0, Deletes=0"
    assert named.values(str(svc.record), rtype) == set(primary)
    assert named.ttl(str(svc.record), rtype) == 30

    await converge(provider, [svc], {"standby": 100})
    assert await provider.read([svc]) == {"www": (Answer(None, frozenset(standby), None, 30),)}
    assert not await converge(provider, [svc], {"standby": 100}), "idempotent"


async def test_ramp_step_is_a_mixed_answer(named: Named, provider: Rfc2136Provider) -> None:
    svc = service()
    await converge(provider, [svc], {"standby": 100})
    await converge(provider, [svc], {"primary": 50, "standby": 50})
    assert named.values("www." + ZONE, "A") == {"192.0.2.1", "192.0.2.2", "198.51.100.1"}
    await converge(provider, [svc], {"primary": 100, "standby": 0})
    assert named.values("www." + ZONE, "A") == {"192.0.2.1", "192.0.2.2"}


async def test_changes_of_one_zone_go_in_one_update(
    named: Named, provider: Rfc2136Provider
) -> None:
    services = [service(f"svc{i}") for i in range(50)]
    sent = count_updates(provider)
    serial = named.serial()
    await converge(provider, services, {"primary": 100})
    assert sent == [50]
    # One UPDATE is one transaction: the serial moves once.
    assert named.serial() == serial + 1


async def test_a_batch_past_the_message_size_is_split(
    named: Named, provider: Rfc2136Provider
) -> None:
    services = [service(f"a-rather-long-service-name-{i:04d}", "AAAA") for i in range(1500)]
    sent = count_updates(provider)
    await converge(provider, services, {"standby": 100})
    assert len(sent) > 1 and sum(sent) == 1500
    assert named.values(f"a-rather-long-service-name-1499.{ZONE}", "AAAA") == {
        "2001:db8::2",
        "2001:db8::3",
    }


def count_updates(provider: Rfc2136Provider) -> list[int]:
    """Record how many changes each UPDATE message carried."""
    sizes: list[int] = []
    exchange = provider.client.exchange

    async def counting(message: Any, endpoint: Any, what: str) -> Any:
        if what.startswith("update"):
            sizes.append(len({rrset.name for rrset in message.update}))
        return await exchange(message, endpoint, what)

    provider.client.exchange = counting  # type: ignore[method-assign]
    return sizes
