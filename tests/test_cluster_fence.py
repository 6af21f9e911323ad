"""Fencing that holds past one check per apply, and past one term: the election as the
authority every provider write asks (virtual time on the lease clock, real etcd, Route53 in
moto), and state writes bound to the term they were made in (issue 22, section A)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.etcd import EtcdCluster
from tests.haproxy_server import HaproxyServer
from tests.named import AVAILABLE as NAMED
from tests.named import Named
from tests.support import MotoServer, wait_until
from tests.test_elbv2 import Aws, aws
from tests.test_elbv2 import plan_for as elbv2_plan_for
from tests.test_elbv2 import pool as elbv2_pool
from tests.test_elbv2 import provider as elbv2_provider
from tests.test_haproxy import haproxy, http_sites, make_service, plan_for, provider_for
from tests.test_rfc2136 import converge as rfc2136_converge
from tests.test_rfc2136 import named
from tests.test_rfc2136 import provider_for as rfc2136_provider_for
from tests.test_rfc2136 import service as rfc2136_service

# Fixtures of the adapters' own tests: a real haproxy in front of loopback sites, a real
# BIND, an application load balancer in moto.
__all__ = ["aws", "haproxy", "http_sites", "named"]
from trafficflip.cluster.election import Election
from trafficflip.cluster.etcd import EtcdClient, EtcdUnavailable
from trafficflip.cluster.fencing import FencedProvider, fenced
from trafficflip.cluster.store import EtcdStateStore
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import JournalEntry, ServiceState
from trafficflip.decision.plan import plan_services, render
from trafficflip.errors import NotLeaderError
from trafficflip.providers._dns import DnsClient
from trafficflip.providers.haproxy import HaproxyConfig, HaproxyProvider
from trafficflip.providers.rfc2136 import Rfc2136Config, Rfc2136Provider
from trafficflip.providers.route53 import Route53Config, Route53Provider
from trafficflip.runtime.writer import StateWriter

PREFIX = "/tf-fence"
TTL = 2
ZONES = 8
# The mid-apply case: a lease of 20 s on the virtual clock (its margin 5 s, calls bounded to
# 5 s), Route53 calls of 2 s timeouts (4 s each, connect and read), each taking 3 s.
APPLY_TTL = 20
CALL_TAKES = 3.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    client = EtcdClient(etcd.endpoints, timeout=1.0)
    client.delete(f"{PREFIX}/", prefix=True)
    yield client
    client.close()


def service(index: int) -> ServiceConfig:
    zone = f"z{index}.example.com."
    sites = [
        {"name": "primary", "targets": ["192.0.2.10"], "checks": [tcp(1)]},
        {"name": "dr", "targets": ["198.51.100.20"], "checks": [tcp(2)]},
    ]
    return ServiceConfig(
        name=f"s{index}", provider="aws", zone=zone, record=f"www.{zone}", type="A", ttl=30,
        sites=sites,  # type: ignore[arg-type]
    )  # fmt: skip


def tcp(port: int) -> dict[str, str]:
    return {"type": "tcp", "address": f"127.0.0.1:{port}"}


def record_count(route53: Any, zone_id: str) -> int:
    sets = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return sum(1 for r in sets if r["Type"] == "A")


@pytest.mark.usefixtures("aws_env")
async def test_a_lease_running_out_mid_apply_stops_the_next_call(
    client: EtcdClient, moto_server: MotoServer
) -> None:
    """One apply of 8 zones is 8 calls; the lease runs out after the 4th: no 5th is sent.
    A check once per apply (before the first call) would let all 8 through."""
    route53 = boto3.client("route53")
    zones = {}
    for index in range(ZONES):
        reply = route53.create_hosted_zone(
            Name=f"z{index}.example.com.", CallerReference=f"{index}-{time.time()}"
        )
        zones[index] = str(reply["HostedZone"]["Id"]).removeprefix("/hostedzone/")
    clock = FakeClock()
    election = Election(client, PREFIX, "a", APPLY_TTL, clock=clock)
    assert election.step().leading
    inner = Route53Provider.create("aws", Route53Config(type="route53", timeout=2.0))
    assert isinstance(inner, Route53Provider)
    sent: list[str] = []

    def slow_call(params: Any, **kwargs: Any) -> None:
        sent.append(str(params["url_path"]))
        clock.now += CALL_TAKES

    inner.client.meta.events.register("before-call.route53.ChangeResourceRecordSets", slow_call)
    refusals: list[int] = []
    provider = fenced(inner, election, lambda: refusals.append(1))
    services = [service(i) for i in range(ZONES)]
    actual = await provider.read(services)
    plan = plan_services(
        [(s, render(s, {"primary": 100, "dr": 0}, weighted=True), actual[s.name]) for s in services]
    )
    with pytest.raises(NotLeaderError):
        await provider.apply(plan)
    # Calls start at 0, 3, 6 and 9 s; each needs its 4 s plus the 5 s margin within the
    # 20 s lease: the 5th, at 12 s, is not started.
    assert len(sent) == 4, sent
    written = [i for i in range(ZONES) if record_count(route53, zones[i])]
    assert len(written) == 4
    assert refusals == [1]


def test_call_timeouts_are_bounded_by_the_lease(tmp_path: Path, aws_env: dict[str, str]) -> None:
    """A call that could never start under the lease would stop failover altogether: in
    cluster mode every adapter's call timeout is lowered to what the lease can vouch for."""
    election = Election(EtcdClient(["http://127.0.0.1:9"]), PREFIX, "a", 3)
    limit = election.call_limit()
    assert 0 < limit < 3
    route53 = Route53Provider.create("aws", Route53Config(type="route53"))
    assert isinstance(route53, Route53Provider) and route53.timeout == 10.0
    fenced(route53, election, lambda: None)
    assert route53.authority is election
    assert route53.timeout == limit / 2  # connect and read
    config = route53.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (limit / 2, limit / 2)
    haproxy_config = HaproxyConfig(type="haproxy", socket=str(tmp_path / "s"), timeout=10.0)
    haproxy = HaproxyProvider("lb", haproxy_config)
    fenced(haproxy, election, lambda: None)
    assert [api.timeout for api in haproxy.apis] == [limit]
    dns_config = Rfc2136Config(type="rfc2136", server="127.0.0.1:53", timeout=10.0)
    rfc2136 = Rfc2136Provider("dns", dns_config, DnsClient(10.0, None))
    fenced(rfc2136, election, lambda: None)
    assert rfc2136.client.timeout == limit


def test_fencing_twice_wraps_once() -> None:
    election = Election(EtcdClient(["http://127.0.0.1:9"]), PREFIX, "a", 3)
    route53 = Route53Provider("aws", Route53Config(type="route53"), client=None)
    once = fenced(route53, election, lambda: None)
    assert fenced(once, election, lambda: None) is once
    assert isinstance(once, FencedProvider) and once.inner is route53


# -- state writes bound to their term -------------------------------------------------------


class Partition:
    """The store's view of etcd: ``cut`` makes every call fail as when etcd is unreachable."""

    def __init__(self) -> None:
        self.cut = False

    def problem(self) -> str | None:
        return "etcd unavailable: partitioned" if self.cut else None


def store_of(client: EtcdClient, election: Election, partition: Partition) -> EtcdStateStore:
    return EtcdStateStore(
        client, PREFIX, election.fence, writable=election.writable, etcd_problem=partition.problem
    )


def shares(primary: int) -> ServiceState:
    return ServiceState(shares={"primary": primary, "dr": 100 - primary})


def test_a_deposed_leaders_queued_write_never_lands_in_a_later_term(client: EtcdClient) -> None:
    """A partitioned; B leads and stores dr; B resigns; A is elected again. A's write queued
    in its first term is dropped, not replayed under its new term, and its journal line,
    which is history, is still written."""
    partition = Partition()
    a = Election(client, PREFIX, "a", TTL)
    assert a.step().leading
    writer = StateWriter(store_of(client, a, partition))
    writer.bind_term(a.term)
    writer.start()
    try:
        partition.cut = True
        line = JournalEntry(time.time(), "www", "provider_change", "primary 100 (a, term 1)", {})
        writer.save("www", shares(100), [line])
        wait_until(lambda: not writer.health.ok, timeout=5, what="the write to fail")
        client.revoke(a.lease)  # a's lease ran out while it was cut off
        a.revision = 0  # and its next step saw so
        b = Election(client, PREFIX, "b", TTL)
        assert b.step().leading
        store_of(client, b, Partition()).save("www", shares(0), [])
        b.resign()
        assert a.step().leading and a.term() > 0
        partition.cut = False
        assert writer.flush(10)
    finally:
        writer.stop()
    reader = store_of(client, a, Partition())
    assert reader.load("www") == shares(0), "the old term's state must not land"
    kinds = [(e.kind, e.message) for e in reader.journal("www")]
    assert ("provider_change", "primary 100 (a, term 1)") in kinds
    assert "fencing_refused" in [k for k, _ in kinds]


def test_queued_claims_of_an_ended_term_are_dropped_when_a_new_one_begins(
    client: EtcdClient,
) -> None:
    """Without a write attempt in between: the term changes while the state waits."""
    partition = Partition()
    a = Election(client, PREFIX, "a", TTL)
    assert a.step().leading
    writer = StateWriter(store_of(client, a, partition))
    writer.bind_term(a.term)
    partition.cut = True
    writer.save("www", shares(100), [])  # not started: nothing is written yet
    a.resign()
    assert a.step().leading  # a new term of the same instance
    writer.save("other", shares(50), [])
    partition.cut = False
    writer.start()
    try:
        assert writer.flush(10)
    finally:
        writer.stop()
    reader = store_of(client, a, Partition())
    assert reader.load("www") is None
    assert reader.load("other") == shares(50)


def test_a_write_waits_while_the_lease_is_not_confirmed(client: EtcdClient) -> None:
    clock = FakeClock()
    a = Election(client, PREFIX, "a", 60, clock=clock)
    assert a.step().leading
    store = store_of(client, a, Partition())
    clock.now += a.fresh_for + 0.01
    with pytest.raises(EtcdUnavailable):
        store.save("www", shares(100), [])  # kept and retried by the writer, not dropped
    a.step()
    store.save("www", shares(100), [])
    assert store.load("www") == shares(100)


class Lease:
    """An authority the test sets: whether calls may start, and the timeouts it was asked."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.asked: list[float] = []

    def may_act(self, timeout: float) -> bool:
        self.asked.append(timeout)
        return self.allowed

    def call_limit(self) -> float:
        return 1.0


async def test_haproxy_asks_before_its_set_line(haproxy: HaproxyServer) -> None:
    """The HAProxy edge: the runtime API's write asks the authority with its own timeout,
    per instance; refused, the line is never sent. Reads need no authority."""
    provider = provider_for({"socket": haproxy.socket}, timeout=5.0)
    lease = Lease(allowed=False)
    provider.authorize(lease)
    service = make_service()
    plan = await plan_for(provider, service, {"primary": 25, "standby": 75})
    before = haproxy.weights()
    with pytest.raises(NotLeaderError):
        await provider.apply(plan)
    assert haproxy.weights() == before
    assert lease.asked == [1.0], "asked once, with the timeout bounded by the lease"
    lease.allowed = True
    await provider.apply(plan)
    assert haproxy.weights() == {"a1": 25, "a2": 25, "b1": 75, "b2": 75}


@pytest.mark.skipif(not NAMED, reason="BIND (named) not installed")
async def test_rfc2136_asks_before_each_update(named: Named) -> None:
    """The DNS edge: an UPDATE asks the authority with the exchange's timeout; refused, the
    UPDATE is never sent (the record stays absent). Queries need no authority."""
    provider = rfc2136_provider_for(named)
    lease = Lease(allowed=False)
    provider.authorize(lease)
    svc = rfc2136_service()
    with pytest.raises(NotLeaderError):
        await rfc2136_converge(provider, [svc], {"primary": 100})
    assert named.values(str(svc.record), "A") == set()
    assert lease.asked == [1.0]
    lease.allowed = True
    await rfc2136_converge(provider, [svc], {"primary": 100})
    assert named.values(str(svc.record), "A")


async def test_elbv2_asks_before_each_modify(aws: Aws) -> None:
    """The ELBv2 edge: ModifyListener asks the authority with connect + read of the client
    it rebuilt with lease-bounded timeouts; refused, the listener is unchanged."""
    listener = aws.listener({aws.groups["primary"]: 1})
    service = elbv2_pool(aws, listener_arn=listener)
    provider = elbv2_provider()
    lease = Lease(allowed=False)
    provider.authorize(lease)
    assert provider.timeout == 0.5
    plan = await elbv2_plan_for(provider, service, {"primary": 25, "standby": 75})
    with pytest.raises(NotLeaderError):
        await provider.apply(plan)
    assert aws.weights(aws.forward(listener)) == {"primary": 1}
    assert lease.asked == [1.0]
    lease.allowed = True
    await provider.apply(plan)
    assert aws.weights(aws.forward(listener)) == {"primary": 25, "standby": 75}
    await provider.close()
