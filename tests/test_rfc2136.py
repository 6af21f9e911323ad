"""The rfc2136 provider against a real ``named`` on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.named import AVAILABLE, KEY_NAME, ZONE, Named, new_secret
from trafficflip.config.loader import load_config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Change, Plan, plan_services, render
from trafficflip.errors import (
    ConfigError,
    PermanentProviderError,
    TransientProviderError,
    UnsafePlanError,
)
from trafficflip.providers.rfc2136 import Rfc2136Config, Rfc2136Provider

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

    async def counting(message: Any, endpoint: Any, what: str, **options: Any) -> Any:
        if what.startswith("update"):
            sizes.append(len({rrset.name for rrset in message.update}))
        return await exchange(message, endpoint, what, **options)

    provider.client.exchange = counting  # type: ignore[method-assign]
    return sizes


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        ({"secret": new_secret()}, "BADSIG"),
        ({"key": "unknown-key."}, "BADKEY"),
        ({"tsig": False}, "REFUSED"),
    ],
)
async def test_rejected_credentials_are_permanent_and_name_server_zone_key(
    named: Named, options: dict[str, Any], kind: str
) -> None:
    provider = provider_for(named, **options)
    plan = await converge_plan(provider_for(named), [service()], {"primary": 100})
    with pytest.raises(PermanentProviderError) as caught:
        await provider.apply(plan)
    assert caught.value.kind == kind
    message = str(caught.value)
    assert named.address in message and ZONE in message
    assert options.get("key", KEY_NAME if options.get("tsig", True) else "(none)") in message
    assert named.secret not in message and options.get("secret", named.secret) not in message
    assert named.values("www." + ZONE, "A") == set()


async def test_a_record_outside_the_zone_is_notzone(
    named: Named, provider: Rfc2136Provider
) -> None:
    svc = service(record="www.elsewhere.test.")
    plan = plan_services([(svc, render(svc, {"primary": 100}, weighted=False), ())])
    with pytest.raises(PermanentProviderError, match="NOTZONE") as caught:
        await provider.apply(plan)
    assert caught.value.kind == "NOTZONE"


async def test_a_zone_that_failed_to_load_is_servfail(
    named: Named, provider: Rfc2136Provider
) -> None:
    with pytest.raises(PermanentProviderError, match="zone=broken.test.") as caught:
        await provider.read([service(zone="broken.test.")])
    assert caught.value.kind == "SERVFAIL"


async def test_a_zone_the_server_does_not_serve_is_refused(
    named: Named, provider: Rfc2136Provider
) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await provider.read([service(zone="other.test.")])
    assert caught.value.kind == "REFUSED"


async def test_a_cname_someone_else_wrote_is_reported_not_replaced(
    named: Named, provider: Rfc2136Provider
) -> None:
    with pytest.raises(PermanentProviderError, match="holds a CNAME") as caught:
        await provider.read([service("taken")])
    assert caught.value.kind == "CNAME"


async def test_named_stopped_is_transient(named: Named, provider: Rfc2136Provider) -> None:
    plan = await converge_plan(provider, [service()], {"primary": 100})
    named.stop()
    with pytest.raises(TransientProviderError, match=named.address) as caught:
        await provider._apply(plan)
    assert caught.value.kind == "network"
    with pytest.raises(TransientProviderError):
        await provider.read([service()])


async def test_deleting_or_emptying_the_rrset_is_refused_for_that_service_only(
    named: Named, provider: Rfc2136Provider
) -> None:
    svc, other = service(), service("api")
    current = Answer(None, frozenset({"192.0.2.1"}), None, 30)
    for index, after in enumerate((None, Answer(None, frozenset(), None, 30))):
        change = Change(svc, "delete" if after is None else "update", current, after)
        created = Answer(None, frozenset({f"192.0.2.{50 + index}"}), None, 30)
        desired = {svc.name: (current,), other.name: (created,)}
        before = (await provider.read([other]))[other.name]
        fine = Change(other, "update" if before else "create", next(iter(before), None), created)
        with pytest.raises(UnsafePlanError, match="refusing") as caught:
            await provider.apply(Plan((change, fine), desired))
        assert caught.value.services == {"www"}
        assert named.values(f"api.{ZONE}", "A") == set(created.targets)


# -- conflicts, restarts, confirmation ---------------------------------------------------


async def test_a_hand_edit_between_read_and_apply_is_rebased_and_logged(
    named: Named, provider: Rfc2136Provider, caplog: pytest.LogCaptureFixture
) -> None:
    svc = service()
    await converge(provider, [svc], {"primary": 100})
    plan = await converge_plan(provider, [svc], {"standby": 100})
    named.replace("www." + ZONE, "A", ["203.0.113.7"])

    with caplog.at_level(logging.WARNING, logger="trafficflip.providers.rfc2136"):
        receipt = await provider.apply(plan)

    assert named.values("www." + ZONE, "A") == {"198.51.100.1"}
    assert receipt is not None and receipt.in_sync
    drift = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drift")]
    assert drift == [
        f"drift service=www zone={ZONE} expected=192.0.2.1,192.0.2.2 found=203.0.113.7"
    ]


async def test_a_hand_edit_is_seen_by_the_next_read(
    named: Named, provider: Rfc2136Provider
) -> None:
    svc = service()
    await converge(provider, [svc], {"primary": 100})
    assert (await provider.read([svc]))["www"][0].targets == {"192.0.2.1", "192.0.2.2"}
    named.replace("www." + ZONE, "A", ["203.0.113.7"])
    assert (await provider.read([svc]))["www"][0].targets == {"203.0.113.7"}


async def test_the_journal_keeps_the_change_across_a_restart(
    named: Named, provider: Rfc2136Provider
) -> None:
    svc = service()
    await converge(provider, [svc], {"standby": 100})
    serial = named.serial()
    named.stop()
    named.start()
    assert named.values("www." + ZONE, "A") == {"198.51.100.1"}
    assert named.serial() == serial
    assert not await converge(provider, [svc], {"standby": 100})


async def test_confirm_waits_for_every_verify_server(named: Named, tmp_path: Path) -> None:
    # A second server with its own copy of the zone never sees the update: it lags.
    behind = Named(tmp_path / "behind").start()
    try:
        provider = provider_for(named, verify=[named.address, behind.address])
        plan = await converge_plan(provider, [service()], {"primary": 100})
        receipt = await provider.apply(plan)
        assert receipt is not None and not receipt.in_sync
        assert receipt.change_ids == (f"{ZONE}@{named.serial()}",)
        assert await provider_for(named).confirm(receipt)
        assert not await provider.confirm(receipt)
    finally:
        behind.stop()


async def converge_plan(
    provider: Rfc2136Provider, services: Sequence[ServiceConfig], shares: dict[str, int]
) -> Plan:
    actual = await provider.read(services)
    return plan_services((s, render(s, shares, weighted=False), actual[s.name]) for s in services)


# -- configuration -----------------------------------------------------------------------


def test_the_secret_comes_from_the_environment_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = new_secret()
    monkeypatch.setenv("TRAFFICFLIP_PROVIDERS__BIND__TSIG__SECRET", secret)
    monkeypatch.setenv("TRAFFICFLIP_PROVIDERS__BIND__VERIFY", "127.0.0.2:5353, [::1]")
    data = {
        "providers": {"bind": {"type": "rfc2136", "server": "127.0.0.1", "tsig": {"name": "k."}}},
    }
    config = load_config(data=data).providers["bind"].config
    assert isinstance(config, Rfc2136Config) and config.tsig is not None
    assert config.tsig.secret is not None and config.tsig.secret.get_secret_value() == secret
    assert secret not in repr(config) and secret not in str(config.model_dump())
    assert config.timeout == 2.0 and config.tsig.algorithm == "hmac-sha256"
    provider = Rfc2136Provider.create("bind", config)
    assert provider.server.port == 53
    assert [str(v) for v in provider.verify] == ["127.0.0.2:5353", "[::1]:53"]


def test_the_secret_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tsig.key"
    path.write_text(new_secret() + "\n")
    tsig = {"name": "k.", "secret_file": str(path)}
    config = Rfc2136Config(type="rfc2136", server="127.0.0.1:5353", tsig=tsig)  # type: ignore[arg-type]
    assert Rfc2136Provider.create("bind", config).client.key is not None
    path.unlink()
    with pytest.raises(ConfigError, match="providers.bind.tsig.secret_file: cannot read"):
        Rfc2136Provider.create("bind", config)


@pytest.mark.parametrize(
    ("tsig", "problem"),
    [
        ({"name": "k."}, "set exactly one of secret"),
        ({"name": "k.", "secret": "not base64!"}, "not valid base64"),
        ({"name": "k.", "secret": new_secret(), "algorithm": "rot13"}, "algorithm"),
    ],
)
def test_tsig_problems_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, tsig: dict[str, str], problem: str
) -> None:
    monkeypatch.delenv("TRAFFICFLIP_PROVIDERS__BIND__TSIG__SECRET", raising=False)
    data = {"providers": {"bind": {"type": "rfc2136", "server": "127.0.0.1", "tsig": tsig}}}
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(data=data)
    assert all("not base64!" not in p for p in caught.value.problems)


def test_a_cname_at_the_zone_apex_is_a_config_problem() -> None:
    svc = service(rtype="CNAME", record=ZONE)
    config = Rfc2136Config(type="rfc2136", server="127.0.0.1")
    assert Rfc2136Provider.validate_service(svc, config) == [
        ("record", "a CNAME cannot be at the zone apex (it holds SOA and NS)")
    ]
    assert Rfc2136Provider.validate_service(service(), config) == []


# -- update permission (check-config --live) -----------------------------------------------


@pytest.fixture
def policy_named(tmp_path: Path) -> Iterator[Named]:
    """A zone whose update-policy lets the key write www's A RRset and nothing else."""
    policy = f"grant {KEY_NAME} name www.{ZONE} A;"
    server = Named(tmp_path / "named", {ZONE: ["api IN A 192.0.2.9"]}, update_policy=policy)
    yield server.start()
    server.stop()


async def test_live_check_names_a_record_the_update_policy_denies(policy_named: Named) -> None:
    provider = provider_for(policy_named)
    serial = policy_named.serial()
    api = service("api")
    problems = await provider.check_live(
        [service(), api, service("www6", "AAAA", record=f"www.{ZONE}")]
    )
    assert problems == [
        f"providers.bind: service {name}: the key {KEY_NAME} may not update {record} {rtype} "
        "(REFUSED): see the zone's update-policy"
        for name, record, rtype in (("api", f"api.{ZONE}", "A"), ("www6", f"www.{ZONE}", "AAAA"))
    ]
    assert await provider.check_live([service()]) == []
    # The probes changed nothing: the prerequisites can never hold.
    assert policy_named.serial() == serial
    assert policy_named.values(f"api.{ZONE}", "A") == {"192.0.2.9"}
    assert policy_named.values(f"www.{ZONE}", "A") == set()
    # The first real update then fails with a hint naming update-policy.
    plan = await converge_plan(provider, [api], {"primary": 100})
    with pytest.raises(PermanentProviderError, match="update-policy") as caught:
        await provider.apply(plan)
    assert caught.value.kind == "REFUSED"


async def test_a_host_name_lookup_is_bounded_by_the_timeout(named: Named) -> None:
    async def hanging(host: str) -> str:
        await asyncio.sleep(3600)  # a resolver that never answers
        return host

    provider = provider_for(named)
    provider.client.lookup = hanging
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="looking up 127.0.0.1 took more than 1s"):
        await provider.read([service()])
    assert time.monotonic() - started < 10  # the 1s timeout, with slack for a loaded machine


def test_the_tsig_key_repr_hides_the_secret(named: Named) -> None:
    provider = provider_for(named)
    assert provider.client.key is not None
    for text in (repr(provider.client.key), str(provider.client.key), repr(provider.config)):
        assert named.secret not in text
    assert KEY_NAME in repr(provider.client.key)


def test_a_secret_file_is_checked_offline(tmp_path: Path) -> None:
    """check-config without --live reads the secret file: missing or not base64 is caught."""
    path = tmp_path / "tsig.key"
    path.write_text("not base64!\n")
    data = {
        "providers": {
            "bind": {
                "type": "rfc2136",
                "server": "127.0.0.1",
                "tsig": {"name": "k.", "secret_file": str(path)},
            }
        },
    }
    with pytest.raises(ConfigError) as caught:
        load_config(data=data)
    assert caught.value.problems == [
        "providers.bind.tsig.secret_file: tsig secret_file is not valid base64"
    ]
    path.unlink()
    with pytest.raises(ConfigError) as caught:
        load_config(data=data)
    assert caught.value.problems == [
        f"providers.bind.tsig.secret_file: cannot read {path}: No such file or directory"
    ]
