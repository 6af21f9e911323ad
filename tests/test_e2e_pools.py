"""End to end for pools: ``trafficflip run`` as a subprocess, real loopback sites, and a real
HAProxy or moto's ELBv2 server in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import boto3
import pytest
import yaml

from tests.haproxy_server import HaproxyServer
from tests.support import ROOT, HttpSite, MotoServer, Process, trafficflip_command, wait_until

INTERVAL, FALL, RISE = 0.2, 2, 2
STEPS = [25, 50, 100]
RECONCILE = 2.0
# The acceptance bound for a failover: fall x interval plus one second.
FAILOVER_DEADLINE = FALL * INTERVAL + 1.0
PRIMARY = {"primary": 100, "standby": 0}
STANDBY = {"primary": 0, "standby": 100}
Weights = dict[str, int]


def service(
    target: Mapping[str, Any], sites: Mapping[str, Mapping[str, HttpSite]], step: str
) -> Any:
    """A pool service whose sites are healthy while every one of their HTTP servers is."""
    return {
        "name": "www",
        "provider": "pool",
        **target,
        "health": {"interval": INTERVAL, "timeout": 0.15, "fall": FALL, "rise": RISE},
        "failback": {"stabilize": "1s", "steps": STEPS, "step_duration": step},
        "sites": [
            {
                "name": name,
                "targets": list(servers),
                "checks": [{"type": "http", "url": s.url} for s in servers.values()],
            }
            for name, servers in sites.items()
        ],
    }


class Run:
    """``trafficflip run`` on a config file written for one provider."""

    def __init__(self, tmp_path: Path, provider: dict[str, Any], svc: Any, env: dict[str, str]):
        self.tmp_path = tmp_path
        self.env = env
        self.config = tmp_path / "trafficflip.yaml"
        data = {
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "reconcile_interval": f"{RECONCILE:g}s",
            "log_level": "debug",
            "providers": {"pool": provider},
            "services": [svc],
        }
        self.config.write_text(yaml.safe_dump(data), encoding="utf-8")
        self.process: Process | None = None

    def start(self) -> None:
        self.process = Process(
            trafficflip_command("run", "--config", str(self.config)),
            env=self.env,
            log=self.tmp_path / "run.log",
            cwd=ROOT,
        )

    def stop(self) -> int:
        assert self.process is not None
        return self.process.stop()

    def output(self) -> str:
        return self.process.output() if self.process else ""


def record_until(
    read: Callable[[], Weights | None], want: Weights, timeout: float
) -> list[Weights]:
    """Every distinct weight state seen until ``want`` (half-written states are skipped)."""
    seen: list[Weights] = []

    def reached() -> bool:
        weights = read()
        if weights is not None and (not seen or seen[-1] != weights):
            seen.append(weights)
        return weights == want

    wait_until(reached, timeout=timeout, what=f"weights {want}, saw {seen}")
    return seen


def assert_ramp(seen: list[Weights]) -> None:
    """Back to the primary through every configured step, in order, never back to standby.

    Raised weights are written before lowered ones, so a poll may catch a step half written
    with more than 100 in rotation, never less.
    """
    assert all(w["primary"] + w["standby"] >= 100 for w in seen), seen
    settled = [w for w in seen if w["primary"] + w["standby"] == 100]
    assert [w["primary"] for w in settled] == [0, *STEPS], seen


# -- HAProxy --------------------------------------------------------------------------------

SERVERS = {"primary": ["a1", "a2"], "standby": ["b1", "b2"]}


class HaproxyPool:
    def __init__(self, tmp_path: Path, step: str) -> None:
        self.sites = {site: {name: HttpSite() for name in names} for site, names in SERVERS.items()}
        for servers in self.sites.values():
            for name, http in servers.items():
                http.body = name.encode()
                http.start()
        self.haproxy = HaproxyServer({n: s for v in self.sites.values() for n, s in v.items()})
        self.haproxy.start()
        provider = {"type": "haproxy", "socket": self.haproxy.socket, "timeout": "1s"}
        svc = service({"backend": self.haproxy.backend}, self.sites, step)
        self.run = Run(tmp_path, provider, svc, {})

    def weights(self) -> Weights | None:
        """Site -> weight, or None while a site's servers disagree (a write in progress)."""
        held = self.haproxy.weights()
        per_site = {site: {held[n] for n in names} for site, names in SERVERS.items()}
        if any(len(w) != 1 for w in per_site.values()):
            return None
        return {site: w.pop() for site, w in per_site.items()}

    def set_primary(self, up: bool) -> None:
        for http in self.sites["primary"].values():
            http.start() if up else http.stop()

    def close(self) -> None:
        if self.run.process is not None:
            self.run.stop()
        self.haproxy.close()
        for servers in self.sites.values():
            for http in servers.values():
                http.stop()


@pytest.fixture
def haproxy_pool(tmp_path: Path) -> Iterator[HaproxyPool]:
    pool = HaproxyPool(tmp_path, step="1s")
    yield pool
    pool.close()


def test_haproxy_failover_and_gradual_failback(haproxy_pool: HaproxyPool) -> None:
    pool = haproxy_pool
    pool.run.start()
    wait_until(lambda: pool.weights() == PRIMARY, timeout=20, what="initial weights")
    pool.set_primary(False)
    wait_until(lambda: pool.weights() == STANDBY, timeout=FAILOVER_DEADLINE, what="failover")
    bodies = [pool.haproxy.get() for _ in range(12)]
    assert {status for status, _ in bodies} == {200}, bodies
    assert {body for _, body in bodies} == {"b1", "b2"}
    pool.set_primary(True)
    assert_ramp(record_until(pool.weights, PRIMARY, timeout=20))
    assert {pool.haproxy.get()[1] for _ in range(8)} == {"a1", "a2"}
    assert pool.run.stop() == 0
    assert "failover www: primary down" in pool.run.output()


def test_haproxy_restarted_mid_ramp_gets_its_weights_back(tmp_path: Path) -> None:
    pool = HaproxyPool(tmp_path, step="4s")
    try:
        pool.run.start()
        wait_until(lambda: pool.weights() == PRIMARY, timeout=20, what="initial weights")
        pool.set_primary(False)
        wait_until(lambda: pool.weights() == STANDBY, timeout=FAILOVER_DEADLINE, what="failover")
        pool.set_primary(True)
        step = {"primary": 25, "standby": 75}
        wait_until(lambda: pool.weights() == step, timeout=10, what="the first ramp step")
        pool.haproxy.restart()
        # Within one reconcile interval (plus the calls) the step is written again.
        seen = record_until(pool.weights, step, timeout=RECONCILE + 1.0)
        assert seen[0] == {"primary": 1, "standby": 1}, seen
        assert_ramp([STANDBY, *record_until(pool.weights, PRIMARY, timeout=20)])
    finally:
        pool.close()


# -- ELBv2 ----------------------------------------------------------------------------------


class Elbv2Pool:
    def __init__(self, tmp_path: Path, moto: MotoServer) -> None:
        self.elb = _client("elbv2", moto)
        self.groups, self.listener = _listener(moto)
        self.sites = {"primary": HttpSite().start(), "standby": HttpSite().start()}
        sites = {name: {self.groups[name]: http} for name, http in self.sites.items()}
        svc = service({"listener_arn": self.listener}, sites, "1s")
        self.run = Run(tmp_path, {"type": "elbv2"}, svc, moto.env())

    def weights(self) -> Weights:
        action = self.elb.describe_listeners(ListenerArns=[self.listener])["Listeners"][0][
            "DefaultActions"
        ][0]
        names = {arn: name for name, arn in self.groups.items()}
        if "ForwardConfig" not in action:  # the plain forward it was created with
            return {names[action["TargetGroupArn"]]: 1}
        groups = action["ForwardConfig"]["TargetGroups"]
        return {names[g["TargetGroupArn"]]: g["Weight"] for g in groups}

    def close(self) -> None:
        if self.run.process is not None:
            self.run.stop()
        for http in self.sites.values():
            http.stop()
        self.elb.close()


def _client(name: Literal["ec2", "elbv2"], moto: MotoServer) -> Any:
    return boto3.client(
        name,
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _listener(moto: MotoServer) -> tuple[dict[str, str], str]:
    """An ALB whose listener forwards to the primary's target group only."""
    ec2 = _client("ec2", moto)
    elb = _client("elbv2", moto)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{i}.0/24", AvailabilityZone=f"us-east-1{z}")
        for i, z in enumerate("ab")
    ]
    lb = elb.create_load_balancer(Name="web", Subnets=[s["Subnet"]["SubnetId"] for s in subnets])
    groups = {
        name: elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc)[
            "TargetGroups"
        ][0]["TargetGroupArn"]
        for name in ("primary", "standby")
    }
    listener = elb.create_listener(
        LoadBalancerArn=lb["LoadBalancers"][0]["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": groups["primary"]}],
    )["Listeners"][0]["ListenerArn"]
    ec2.close()
    elb.close()
    return groups, listener


def test_elbv2_failover_and_gradual_failback(tmp_path: Path, moto_server: MotoServer) -> None:
    pool = Elbv2Pool(tmp_path, moto_server)
    try:
        pool.run.start()
        wait_until(lambda: pool.weights() == PRIMARY, timeout=20, what="initial weights")
        pool.sites["primary"].stop()
        wait_until(lambda: pool.weights() == STANDBY, timeout=FAILOVER_DEADLINE, what="failover")
        pool.sites["primary"].start()
        assert_ramp(record_until(pool.weights, PRIMARY, timeout=20))
        assert pool.run.stop() == 0
    finally:
        pool.close()
