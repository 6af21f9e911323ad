"""The Route53 adapter against moto in server mode (the HTTP API, through AWS_ENDPOINT_URL)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.support import CountingProxy, MotoServer
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import plan_services, render
from trafficflip.errors import PermanentProviderError, TransientProviderError
from trafficflip.providers._aws import parse_retry_after
from trafficflip.providers.route53 import Route53Config, Route53Provider, _batches

pytestmark = pytest.mark.usefixtures("aws_env")


def service(name: str = "www", record: str | None = None, rtype: str = "A") -> ServiceConfig:
    targets = (
        (["192.0.2.10"], ["198.51.100.20"])
        if rtype == "A"
        else (["a.example.net."], ["b.example.net."])
    )
    return ServiceConfig(
        name=name,
        provider="aws",
        zone="example.com.",
        record=record or f"{name}.example.com.",
        type=rtype,
        ttl=30,  # type: ignore[arg-type]
        sites=[
            {
                "name": "primary",
                "targets": targets[0],  # type: ignore[list-item]
                "checks": [{"type": "tcp", "address": "127.0.0.1:1"}],
            },
            {
                "name": "dr",
                "targets": targets[1],  # type: ignore[list-item]
                "checks": [{"type": "tcp", "address": "127.0.0.1:2"}],
            },
        ],
    )


@pytest.fixture
def zone_id() -> str:
    zone = boto3.client("route53").create_hosted_zone(
        Name="example.com.", CallerReference=str(time.time())
    )
    return str(zone["HostedZone"]["Id"]).removeprefix("/hostedzone/")


@pytest.fixture
def provider(zone_id: str) -> Route53Provider:
    return Route53Provider.create("aws", Route53Config(type="route53"))  # type: ignore[return-value]


async def converge(provider: Route53Provider, svc: ServiceConfig, shares: dict[str, int]) -> Any:
    actual = (await provider.read([svc]))[svc.name]
    plan = plan_services([(svc, render(svc, shares, weighted=True), actual)])
    return plan, await provider.apply(plan)


def record_sets(zone_id: str, name: str = "www.example.com.") -> dict[str | None, Any]:
    sets = boto3.client("route53").list_resource_record_sets(
        HostedZoneId=zone_id, StartRecordName=name
    )
    return {r.get("SetIdentifier"): r for r in sets["ResourceRecordSets"] if r["Name"] == name}


async def test_weighted_records_round_trip(provider: Route53Provider, zone_id: str) -> None:
    svc = service()
    plan, receipt = await converge(provider, svc, {"primary": 100, "dr": 0})
    assert plan.summary == "Creates=2, Updates=0, Deletes=0"
    held = record_sets(zone_id)
    assert held["primary"]["Weight"] == 100 and held["dr"]["Weight"] == 0
    assert held["primary"]["ResourceRecords"] == [{"Value": "192.0.2.10"}]
    assert held["primary"]["TTL"] == 30
    assert receipt.change_ids and receipt.change_ids[0]
    assert await provider.confirm(receipt)
    plan, _ = await converge(provider, svc, {"primary": 25, "dr": 75})
    assert plan.summary == "Creates=0, Updates=2, Deletes=0"
    assert record_sets(zone_id)["dr"]["Weight"] == 75
    plan, receipt = await converge(provider, svc, {"primary": 25, "dr": 75})
    assert not plan and receipt is None


async def test_takes_over_a_plain_record_in_one_batch(
    provider: Route53Provider, zone_id: str
) -> None:
    boto3.client("route53").change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": "www.example.com.",
                        "Type": "A",
                        "TTL": 300,
                        "ResourceRecords": [{"Value": "203.0.113.5"}],
                    },
                }
            ]
        },
    )
    svc = service()
    plan, _ = await converge(provider, svc, {"primary": 100, "dr": 0})
    assert plan.summary == "Creates=2, Updates=0, Deletes=1"
    assert plan.changes[0].action == "delete"  # first in the batch
    held = record_sets(zone_id)
    assert set(held) == {"primary", "dr"}


async def test_only_configured_names_are_touched(provider: Route53Provider, zone_id: str) -> None:
    client = boto3.client("route53")
    client.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": "api.example.com.",
                        "Type": "A",
                        "TTL": 60,
                        "ResourceRecords": [{"Value": "203.0.113.9"}],
                    },
                }
            ]
        },
    )
    await converge(provider, service(), {"primary": 100, "dr": 0})
    assert record_sets(zone_id, "api.example.com.")[None]["ResourceRecords"] == [
        {"Value": "203.0.113.9"}
    ]


async def test_many_services_in_one_zone_read_and_change_together(
    provider: Route53Provider, zone_id: str
) -> None:
    services = [service(f"s{i}") for i in range(5)]
    actual = await provider.read(services)
    shares = {"primary": 0, "dr": 100}
    plan = plan_services((s, render(s, shares, weighted=True), actual[s.name]) for s in services)
    receipt = await provider.apply(plan)
    assert receipt is not None and len(receipt.change_ids) == 1  # one call for the zone
    again = await provider.read(services)
    assert set(again["s3"]) == {
        Answer("dr", frozenset({"198.51.100.20"}), 100, 30),
        Answer("primary", frozenset({"192.0.2.10"}), 0, 30),
    }


async def test_cname_records(provider: Route53Provider, zone_id: str) -> None:
    svc = service("app", rtype="CNAME")
    await converge(provider, svc, {"primary": 0, "dr": 100})
    held = record_sets(zone_id, "app.example.com.")
    assert held["dr"]["ResourceRecords"] == [{"Value": "b.example.net."}]
    plan, _ = await converge(provider, svc, {"primary": 0, "dr": 100})
    assert not plan  # values compare equal after Route53's normalisation


async def test_missing_zone_is_a_permanent_error() -> None:
    provider = Route53Provider.create("aws", Route53Config(type="route53"))
    with pytest.raises(PermanentProviderError, match="no hosted zone named example.com."):
        await provider.read([service()])


async def test_rejected_batch_fails_loudly_with_route53s_message(
    provider: Route53Provider, zone_id: str
) -> None:
    svc = service()
    await converge(provider, svc, {"primary": 100, "dr": 0})
    # DELETE of a record set that does not match what Route53 holds is rejected.
    bogus = Answer(None, frozenset({"203.0.113.1"}), None, 5)
    provider._raw[("www", None)] = {
        "Name": "www.example.com.",
        "Type": "A",
        "TTL": 5,
        "ResourceRecords": [{"Value": "203.0.113.1"}],
    }
    actual = [*(await provider.read([svc]))["www"], bogus]
    plan = plan_services([(svc, render(svc, {"primary": 100, "dr": 0}, weighted=True), actual)])
    with pytest.raises(PermanentProviderError) as raised:
        await provider.apply(plan)
    # moto answers InvalidInput where Route53 answers InvalidChangeBatch; both are refusals.
    assert raised.value.kind in ("InvalidChangeBatch", "InvalidInput")
    assert str(raised.value).startswith("route53 ChangeResourceRecordSets: ")


async def test_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    provider = Route53Provider.create("aws", Route53Config(type="route53", timeout=1.0))
    with pytest.raises(TransientProviderError):
        await provider.read([service()])


def test_batches_split_at_route53_limits_and_keep_a_name_together() -> None:
    def upsert(name: str, value: str = "192.0.2.1") -> dict[str, Any]:
        return {
            "Action": "UPSERT",
            "ResourceRecordSet": {"Name": name, "ResourceRecords": [{"Value": value}]},
        }

    # An UPSERT's record counts twice against the 1,000 ResourceRecord elements.
    changes = [upsert(f"n{i // 2}.example.com.") for i in range(2500)]
    batches = _batches(changes)
    assert [len(b) for b in batches] == [500] * 5
    assert all(len({c["ResourceRecordSet"]["Name"] for c in b}) == 250 for b in batches)
    deletes = [{**upsert(f"d{i}.example.com."), "Action": "DELETE"} for i in range(1500)]
    assert [len(b) for b in _batches(deletes)] == [1000, 500]
    big = [upsert(f"b{i}.example.com.", "x" * 1000) for i in range(40)]
    assert all(sum(2 * 1000 for _ in b) <= 32000 for b in _batches(big))
    assert len(_batches(big)) == 3


# -- quotas: call budget, throttling, few calls at start ------------------------------------


@pytest.fixture
def proxy(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingProxy]:
    counting = CountingProxy(moto_server.url, max_changes_per_second=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", counting.url)
    yield counting
    counting.stop()


async def test_initial_convergence_of_250_services_takes_four_calls(
    zone_id: str, proxy: CountingProxy
) -> None:
    """250 services x 2 weighted sites = 500 UPSERTs = 1,000 records as Route53 counts them:
    exactly one change call. Zone lookup, one listing page, the change, one GetChange."""
    provider = Route53Provider.create("aws", Route53Config(type="route53"))
    services = [service(f"s{i:03d}") for i in range(250)]
    actual = await provider.read(services)
    shares = {"primary": 100, "dr": 0}
    plan = plan_services((s, render(s, shares, weighted=True), actual[s.name]) for s in services)
    receipt = await provider.apply(plan)
    assert receipt is not None
    await provider.confirm(receipt)
    assert (proxy.changes, proxy.throttled, proxy.requests) == (1, 0, 4)
    held = record_sets(zone_id, "s249.example.com.")
    assert held["primary"]["Weight"] == 100 and held["dr"]["Weight"] == 0


async def test_a_first_deployment_read_first_creates_2_records_per_service_in_one_count(
    zone_id: str, proxy: CountingProxy
) -> None:
    """500 services read and found absent: 1,000 CREATEs are 1,000 records as Route53
    counts them (an UPSERT counts twice), so one change call; the flip after is UPSERTs."""
    provider = Route53Provider.create("aws", Route53Config(type="route53"))
    services = [service(f"s{i:03d}") for i in range(500)]
    actual = await provider.read(services)
    shares = {"primary": 100, "dr": 0}
    items = [(s, render(s, shares, weighted=True), actual[s.name]) for s in services]
    assert await provider.apply(plan_services(items, read_first=True)) is not None
    assert (proxy.changes, proxy.throttled) == (1, 0)
    assert record_sets(zone_id, "s499.example.com.")["primary"]["Weight"] == 100
    actual = await provider.read(services)
    flipped = {"primary": 0, "dr": 100}
    items = [(s, render(s, flipped, weighted=True), actual[s.name]) for s in services]
    assert await provider.apply(plan_services(items, read_first=True)) is not None
    assert (proxy.changes, proxy.throttled) == (3, 0)  # 2,000 counted: two more calls
    assert record_sets(zone_id, "s499.example.com.")["dr"]["Weight"] == 100


async def test_a_record_set_created_since_the_read_is_written_over(
    zone_id: str, proxy: CountingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    provider = Route53Provider.create("aws", Route53Config(type="route53"))
    services = [service("www"), service("api")]
    actual = await provider.read(services)
    # Another writer (say, a second instance) creates one of the record sets between our
    # read and our write. moto refuses a CREATE only when it repeats an earlier one exactly,
    # as real Route53 refuses any CREATE of an existing record set.
    other = {"Name": "api.example.com.", "Type": "A", "SetIdentifier": "primary", "Weight": 100}
    other |= {"TTL": 30, "ResourceRecords": [{"Value": "192.0.2.10"}]}
    boto3.client("route53").change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": other}]},
    )
    shares = {"primary": 100, "dr": 0}
    items = [(s, render(s, shares, weighted=True), actual[s.name]) for s in services]
    receipt = await provider.apply(plan_services(items, read_first=True))
    assert receipt is not None and await provider.confirm(receipt)
    for name in ("www.example.com.", "api.example.com."):
        held = record_sets(zone_id, name)
        assert (held["primary"]["Weight"], held["dr"]["Weight"]) == (100, 0)
    assert proxy.changes == 3  # the other writer's, our refused CREATEs, the same as UPSERTs
    assert "create_refused" in caplog.text


async def test_one_more_service_splits_at_the_documented_limit(
    zone_id: str, proxy: CountingProxy
) -> None:
    provider = Route53Provider.create("aws", Route53Config(type="route53"))
    services = [service(f"s{i:03d}") for i in range(251)]
    shares = {"primary": 100, "dr": 0}
    plan = plan_services((s, render(s, shares, weighted=True), ()) for s in services)
    receipt = await provider.apply(plan)
    assert receipt is not None and len(receipt.change_ids) == 2
    assert (proxy.changes, proxy.throttled) == (2, 0)


async def test_the_budget_keeps_calls_under_route53s_rate(
    zone_id: str, proxy: CountingProxy
) -> None:
    provider = Route53Provider.create("aws", Route53Config(type="route53"))
    svc = service()
    for turn in range(8):
        await converge(provider, svc, {"primary": 100, "dr": 0} if turn % 2 else {"dr": 100})
    assert (proxy.changes, proxy.throttled) == (8, 0)
    assert provider.budget.spent == proxy.requests


async def test_a_throttling_answer_is_raised_not_retried_by_botocore(
    zone_id: str, proxy: CountingProxy
) -> None:
    proxy._rate = 1  # Route53 sees more calls than our budget knows of (another client)
    config = Route53Config(type="route53", hosted_zone_id=zone_id, max_calls_per_second=100)
    provider = Route53Provider.create("aws", config)
    svc = service()
    plan = plan_services([(svc, render(svc, {"primary": 100}, weighted=True), ())])
    await provider.apply(plan)
    with pytest.raises(TransientProviderError) as caught:
        await provider.apply(plan)
    assert caught.value.kind == "throttled" and caught.value.retry_after is None
    assert "Throttling: Rate exceeded" in str(caught.value)
    assert (proxy.changes, proxy.throttled) == (1, 1)  # one request each: no hidden retry
    assert provider.budget.bucket is not None
    assert provider.budget.bucket.available(provider.budget.clock()) < 0  # held back


async def test_a_failed_batch_names_only_its_services_and_the_unsent_ones(
    zone_id: str, proxy: CountingProxy
) -> None:
    """251 services are two calls; the second is throttled. The first batch's 250 services
    were written and are not named: only s250 is retried."""
    proxy._rate = 1  # Route53 allows one call now: our budget does not know (another client)
    config = Route53Config(type="route53", hosted_zone_id=zone_id, max_calls_per_second=100)
    provider = Route53Provider.create("aws", config)
    services = [service(f"s{i:03d}") for i in range(251)]
    shares = {"primary": 100, "dr": 0}
    plan = plan_services((s, render(s, shares, weighted=True), ()) for s in services)
    with pytest.raises(TransientProviderError) as caught:
        await provider.apply(plan)
    assert caught.value.services == frozenset({"s250"})
    assert record_sets(zone_id, "s249.example.com.")["primary"]["Weight"] == 100
    assert not record_sets(zone_id, "s250.example.com.")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("3", 3.0), ("0.5", 0.5), ("-1", 0.0), ("soon", None)],
)
def test_retry_after_is_read_in_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30
