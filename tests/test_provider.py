"""The provider contract's template: per-service safety checks in ``Provider.apply``."""

from __future__ import annotations

import pytest

from trafficflip.backend.testing import MemoryProvider
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Change, Plan, make_plan, render
from trafficflip.errors import PermanentProviderError, UnsafePlanError

CHECK = [{"type": "tcp", "address": "127.0.0.1:9"}]


def plan_creating(*items: tuple[ServiceConfig, tuple[Answer, ...]]) -> Plan:
    """A plan creating each service's desired answers, built without ``diff`` (which refuses
    an unsafe service by itself) so that the provider's own checks are what is tested."""
    changes = [Change(s, "create", None, answer) for s, desired in items for answer in desired]
    return make_plan(changes, {s.name: desired for s, desired in items})


def service(name: str, sites: tuple[str, ...] = ("primary", "standby")) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "name": name,
            "provider": "mem",
            "zone": "example.com.",
            "record": f"{name}.example.com.",
            "type": "A",
            "ttl": 30,
            "sites": [
                {"name": site, "targets": [f"192.0.2.{i + 1}"], "checks": CHECK}
                for i, site in enumerate(sites)
            ],
        }
    )


async def test_an_unsafe_service_is_refused_and_the_others_applied() -> None:
    """Shares kept under old site names render as all zeros after a rename: that service is
    refused, not the provider's whole batch."""
    provider = MemoryProvider()
    www, renamed = service("www"), service("api", ("main", "dr"))
    shares = {"primary": 0, "standby": 100}  # decided before api's sites were renamed
    plan = plan_creating(*((s, render(s, shares, weighted=True)) for s in (www, renamed)))
    with pytest.raises(UnsafePlanError, match="service api: refusing") as caught:
        await provider.apply(plan)
    assert caught.value.services == {"api"} and caught.value.kind == "unsafe"
    assert provider.weights("www") == {"primary": 0, "standby": 100}
    assert provider.weights("api") == {}


async def test_a_weight_beyond_the_backend_refuses_only_its_service() -> None:
    provider = MemoryProvider()
    www, api = service("www"), service("api")
    over = tuple(
        a.__class__(a.site, a.targets, 500, a.ttl)
        for a in render(api, {"primary": 100}, weighted=True)
    )
    plan = plan_creating((www, render(www, {"primary": 100}, weighted=True)), (api, over))
    with pytest.raises(
        UnsafePlanError, match="weight 500 for api primary is outside 0-100"
    ) as caught:
        await provider.apply(plan)
    assert caught.value.services == {"api"}
    assert provider.weights("www") == {"primary": 100, "standby": 0}


async def test_a_partial_failure_names_the_refused_services_too() -> None:
    provider = MemoryProvider()
    provider.refuse = frozenset({"www"})
    www, db, renamed = service("www"), service("db"), service("api", ("main", "dr"))
    shares = {"primary": 100}
    plan = plan_creating(*((s, render(s, shares, weighted=True)) for s in (www, db, renamed)))
    with pytest.raises(PermanentProviderError) as caught:
        await provider.apply(plan)
    assert caught.value.services == {"www", "api"}
    assert provider.weights("db") == {"primary": 100, "standby": 0}
