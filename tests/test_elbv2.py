"""The elbv2 provider against moto in server mode (the real ELBv2 HTTP API, emulated)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import yaml

from providers.elbv2 import Elbv2Config, Elbv2Provider, Elbv2Service
from tests.support import ROOT, trafficflip_command
from trafficflip.config.loader import load_config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Change, Plan, diff, make_plan, render
from trafficflip.errors import PermanentProviderError, TransientProviderError, UnsafePlanError

ACCOUNT_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012"
STICKY = {"Enabled": True, "DurationSeconds": 300}


@dataclass
class Aws:
    """A VPC with an application load balancer and target groups, created in moto."""

    client: Any
    vpc: str
    lb: str
    groups: dict[str, str]

    def listener(self, groups: Mapping[str, int], **forward: Any) -> str:
        config = {"TargetGroups": [{"TargetGroupArn": a, "Weight": w} for a, w in groups.items()]}
        reply = self.client.create_listener(
            LoadBalancerArn=self.lb,
            Protocol="HTTP",
            Port=80,
            DefaultActions=[{"Type": "forward", "ForwardConfig": {**config, **forward}}],
        )
        return str(reply["Listeners"][0]["ListenerArn"])

    def forward(self, listener: str) -> dict[str, Any]:
        reply = self.client.describe_listeners(ListenerArns=[listener])
        action: dict[str, Any] = reply["Listeners"][0]["DefaultActions"][0]
        return action

    def weights(self, action: Mapping[str, Any]) -> dict[str, int]:
        names = {arn: name for name, arn in self.groups.items()}
        groups = action["ForwardConfig"]["TargetGroups"]
        return {names[g["TargetGroupArn"]]: g["Weight"] for g in groups}


@pytest.fixture
def aws(aws_env: dict[str, str]) -> Aws:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    elb = boto3.client("elbv2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in enumerate("ab")
    ]
    lb = elb.create_load_balancer(Name="web", Subnets=subnets)["LoadBalancers"][0]
    groups = {
        name: elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc)[
            "TargetGroups"
        ][0]["TargetGroupArn"]
        for name in ("primary", "standby", "other")
    }
    ec2.close()
    return Aws(elb, vpc, lb["LoadBalancerArn"], groups)


def make_service(sites: Mapping[str, list[str]], **target: str) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "name": "www",
            "provider": "alb",
            **target,
            "sites": [
                {
                    "name": name,
                    "targets": arns,
                    "checks": [{"type": "tcp", "address": "127.0.0.1:9"}],
                }
                for name, arns in sites.items()
            ],
        }
    )


def pool(aws: Aws, **target: str) -> ServiceConfig:
    primary, standby = aws.groups["primary"], aws.groups["standby"]
    return make_service({"primary": [primary], "standby": [standby]}, **target)


def provider() -> Elbv2Provider:
    return Elbv2Provider.create("alb", Elbv2Config(type="elbv2"))


async def plan_for(p: Elbv2Provider, service: ServiceConfig, shares: Mapping[str, int]) -> Plan:
    actual = (await p.read([service]))[service.name]
    desired = render(service, shares, weighted=True)
    return make_plan(diff(service, desired, actual), {service.name: desired})


async def test_apply_then_read_round_trips_and_keeps_stickiness(aws: Aws) -> None:
    listener = aws.listener({aws.groups["primary"]: 1}, TargetGroupStickinessConfig=STICKY)
    service = pool(aws, listener_arn=listener)
    p = provider()
    plan = await plan_for(p, service, {"primary": 25, "standby": 75})
    assert plan.summary == "Creates=1, Updates=1, Deletes=0"
    receipt = await p.apply(plan)
    assert receipt is not None and receipt.change_ids == (listener,)
    action = aws.forward(listener)
    assert aws.weights(action) == {"primary": 25, "standby": 75}
    assert action["ForwardConfig"]["TargetGroupStickinessConfig"] == STICKY
    assert (await p.read([service]))["www"] == (
        Answer("primary", frozenset({aws.groups["primary"]}), 25),
        Answer("standby", frozenset({aws.groups["standby"]}), 75),
    )
    assert not await plan_for(p, service, {"primary": 25, "standby": 75})
    await p.close()


async def test_failover_sets_zero_and_leaves_foreign_groups_alone(aws: Aws) -> None:
    listener = aws.listener({aws.groups["primary"]: 100, aws.groups["other"]: 3})
    service = pool(aws, listener_arn=listener)
    p = provider()
    await p.apply(await plan_for(p, service, {"standby": 100}))
    assert aws.weights(aws.forward(listener)) == {"primary": 0, "other": 3, "standby": 100}
    assert await p.check_live([service]) == [
        f"providers.alb: service www: target group {aws.groups['other']} (weight 3) is in the "
        "forward action but in no site: trafficflip does not steer it"
    ]
    await p.close()


async def test_a_site_whose_groups_disagree_is_rewritten(aws: Aws) -> None:
    extra = aws.client.create_target_group(
        Name="primary-b", Protocol="HTTP", Port=80, VpcId=aws.vpc
    )["TargetGroups"][0]["TargetGroupArn"]
    listener = aws.listener({aws.groups["primary"]: 100, extra: 5, aws.groups["standby"]: 0})
    service = make_service(
        {"primary": [aws.groups["primary"], extra], "standby": [aws.groups["standby"]]},
        listener_arn=listener,
    )
    p = provider()
    plan = await plan_for(p, service, {"primary": 100})
    [change] = plan.changes
    assert change.before is not None and change.before.weight is None
    await p.apply(plan)
    assert (await p.read([service]))["www"][0].weight == 100
    await p.close()


async def test_rule_arn_rewrites_the_rules_forward_action(aws: Aws) -> None:
    listener = aws.listener({aws.groups["other"]: 1})
    rule = aws.client.create_rule(
        ListenerArn=listener,
        Priority=10,
        Conditions=[{"Field": "path-pattern", "Values": ["/app/*"]}],
        Actions=[{"Type": "forward", "TargetGroupArn": aws.groups["primary"]}],
    )["Rules"][0]
    service = pool(aws, rule_arn=rule["RuleArn"])
    p = provider()
    assert (await p.read([service]))["www"] == (
        Answer("primary", frozenset({aws.groups["primary"]}), 1),
    )
    await p.apply(await plan_for(p, service, {"primary": 50, "standby": 50}))
    [after] = aws.client.describe_rules(RuleArns=[rule["RuleArn"]])["Rules"]
    assert aws.weights(after["Actions"][0]) == {"primary": 50, "standby": 50}
    assert "TargetGroupArn" not in after["Actions"][0]
    assert (after["Priority"], after["Conditions"]) == (rule["Priority"], rule["Conditions"])
    assert aws.weights(aws.forward(listener)) == {"other": 1}
    await p.close()


async def test_a_missing_listener_is_named_and_does_not_block_the_others(aws: Aws) -> None:
    listener = aws.listener({aws.groups["primary"]: 1})
    gone = listener[:-16] + "0123456789abcdef"
    good = pool(aws, listener_arn=listener)
    bad = pool(aws, listener_arn=gone).model_copy(update={"name": "api"})
    p = provider()
    actual = await p.read([good, bad])
    assert actual["api"] == ()
    desired = {s.name: render(s, {"standby": 100}, weighted=True) for s in (good, bad)}
    changes = [c for s in (good, bad) for c in diff(s, desired[s.name], actual[s.name])]
    with pytest.raises(PermanentProviderError, match=f"service api: no listener {gone}$"):
        await p.apply(make_plan(changes, desired))
    assert aws.weights(aws.forward(listener)) == {"primary": 0, "standby": 100}
    assert await p.check_live([bad]) == [f"providers.alb: service api: no listener {gone}"]
    await p.close()


async def test_missing_target_group_is_reported_by_check_live(aws: Aws) -> None:
    listener = aws.listener({aws.groups["primary"]: 1})
    gone = f"{ACCOUNT_ARN}:targetgroup/gone/0123456789abcdef"
    service = make_service(
        {"primary": [aws.groups["primary"]], "standby": [gone]}, listener_arn=listener
    )
    p = provider()
    assert await p.check_live([service]) == [f"providers.alb: no target group {gone}"]
    await p.close()


async def test_weights_above_elbv2s_range_are_refused(aws: Aws) -> None:
    listener = aws.listener({aws.groups["primary"]: 1})
    service = pool(aws, listener_arn=listener)
    after = Answer("primary", frozenset({aws.groups["primary"]}), 1000)
    plan = make_plan([Change(service, "update", None, after)], {service.name: (after,)})
    with pytest.raises(UnsafePlanError, match="weight 1000 .* outside 0-999"):
        await provider().apply(plan)
    assert aws.weights(aws.forward(listener)) == {"primary": 1}


class ThrottledClient:
    def describe_listeners(self, **kwargs: Any) -> dict[str, Any]:
        error = {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}
        raise botocore.exceptions.ClientError(error, "DescribeListeners")  # type: ignore[arg-type]


async def test_throttling_is_transient() -> None:
    p = Elbv2Provider("alb", Elbv2Config(type="elbv2"), ThrottledClient())  # type: ignore[arg-type]
    service = make_service(
        {"primary": [f"{ACCOUNT_ARN}:targetgroup/a/0123456789abcdef"]},
        listener_arn=f"{ACCOUNT_ARN}:listener/app/web/0123456789abcdef/0123456789abcdef",
    )
    with pytest.raises(TransientProviderError, match="Throttling: Rate exceeded") as caught:
        await p.read([service])
    assert caught.value.kind == "throttled"


def test_the_example_config_is_valid() -> None:
    config = load_config(str(ROOT / "config" / "elbv2.yaml"))
    keys = [s.adapter_keys(Elbv2Service) for s in config.services]
    assert [bool(k.listener_arn) for k in keys] == [True, False]


def test_validate_service_checks_arn_forms_and_regions() -> None:
    tg = f"{ACCOUNT_ARN}:targetgroup/a/0123456789abcdef"
    west = tg.replace("us-east-1", "us-west-2")
    service = make_service(
        {"primary": [tg, "tg-1"], "standby": [tg, west]},
        rule_arn=f"{ACCOUNT_ARN}:listener/app/web/0123456789abcdef/0123456789abcdef",
    )
    rule_arn = service.adapter_keys(Elbv2Service).rule_arn
    assert Elbv2Provider.validate_service(service, Elbv2Config(type="elbv2")) == [
        ("rule_arn", f"{rule_arn!r} is not a listener rule ARN"),
        ("sites[0].targets[1]", "'tg-1' is not a target group ARN"),
        ("sites[1].targets[0]", f"target group {tg} is already in site primary"),
        ("sites[1].targets[1]", f"{west} is in us-west-2, the provider's region is us-east-1"),
    ]
    neither = make_service({"primary": [tg]})
    assert Elbv2Provider.validate_service(neither, Elbv2Config(type="elbv2")) == [
        ("listener_arn", "required for an elbv2 service (or rule_arn for a listener rule)")
    ]


def test_more_target_groups_than_a_forward_action_holds() -> None:
    groups = [f"{ACCOUNT_ARN}:targetgroup/g{i}/0123456789abcdef" for i in range(6)]
    service = make_service(
        {"primary": groups[:3], "standby": groups[3:]},
        listener_arn=f"{ACCOUNT_ARN}:listener/app/web/0123456789abcdef/0123456789abcdef",
    )
    assert Elbv2Provider.validate_service(service, Elbv2Config(type="elbv2")) == [
        ("sites", "a forward action holds at most 5 target groups, the sites name 6")
    ]


def test_check_config_live_names_a_missing_target_group(aws: Aws, tmp_path: Path) -> None:
    listener = aws.listener({aws.groups["primary"]: 1})
    gone = f"{ACCOUNT_ARN}:targetgroup/gone/0123456789abcdef"
    service = make_service(
        {"primary": [aws.groups["primary"]], "standby": [gone]}, listener_arn=listener
    )
    data = {
        "providers": {"alb": {"type": "elbv2"}},
        "services": [service.model_dump(mode="json", exclude_none=True)],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(path), "--live"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result
    assert f"providers.alb: no target group {gone}" in result.stdout
