"""ELBv2: a service is a listener's default forward action (or a listener rule's), each site's
targets are target groups in it.

A site's share (0-100) becomes the ``Weight`` of every one of its target groups in the forward
action's ``ForwardConfig`` (ELBv2 accepts 0-999), written with ModifyListener/ModifyRule and
read back with DescribeListeners/DescribeRules. Weight 0 keeps the group in the action but
sends it no new requests. The action's other settings (stickiness, the other actions, their
order) are sent back as they were read. Target groups in the action that belong to no site
are left as they are; ``check_live`` reports the ones that take traffic.

Credentials and the endpoint come from the standard AWS chain
(``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`` points it at a local emulation).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from trafficflip.backend.budget import CallBudget
from trafficflip.backend.provider import Provider, Receipt
from trafficflip.config.durations import Duration
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Plan
from trafficflip.errors import PermanentProviderError, ProviderError, TransientProviderError

from . import _aws as aws

if TYPE_CHECKING:
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_elbv2.type_defs import ActionOutputTypeDef, TargetGroupTupleTypeDef

T = TypeVar("T")

# Matched with fullmatch: "$" would also accept a trailing newline.
_ARN = r"arn:aws[a-z-]*:elasticloadbalancing:(?P<region>[a-z0-9-]+):\d{12}:"
LISTENER_ARN = re.compile(_ARN + r"listener/(app|net|gwy)/[^/\s]+/[0-9a-f]+/[0-9a-f]+")
RULE_ARN = re.compile(_ARN + r"listener-rule/(app|net|gwy)/[^/\s]+/[0-9a-f]+/[0-9a-f]+/[0-9a-f]+")
TARGET_GROUP_ARN = re.compile(_ARN + r"targetgroup/[^/\s]+/[0-9a-f]+")
# ELBv2's documented limit for one forward action.
MAX_TARGET_GROUPS = 5
# The largest page DescribeListeners and DescribeRules return (their PageSize maximum).
PAGE_SIZE = 400
TRANSIENT_CODES = aws.THROTTLING_CODES | {"TooManyRequestsException"}
NOT_FOUND = {"ListenerNotFound", "RuleNotFound"}


class Elbv2Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["elbv2"]
    region: str = "us-east-1"
    timeout: Duration = 10.0
    # ELBv2 throttles per account and region, Describe* at 10 a second (40 saved up) and
    # mutating actions lower; one budget for both keeps within the mutating ones.
    max_calls_per_second: Annotated[float, Field(gt=0)] = 5.0


class Elbv2Service(BaseModel):
    """The keys an elbv2 service adds: the listener (or listener rule) whose forward action
    holds the sites' target groups. Their form is checked by ``validate_service``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    listener_arn: str | None = None
    rule_arn: str | None = None


def _keys(service: ServiceConfig) -> Elbv2Service:
    return service.adapter_keys(Elbv2Service)


class Elbv2Provider(Provider):
    """Weighted target groups in the forward action of listeners and listener rules."""

    TYPE = "elbv2"
    KIND = "pool"
    SUPPORTS_WEIGHTS = True
    MAX_WEIGHT = 999  # ELBv2's limit; moto accepts more, so it is checked here
    Config = Elbv2Config
    Service = Elbv2Service

    def __init__(
        self, name: str, config: Elbv2Config, client: ElasticLoadBalancingv2Client
    ) -> None:
        super().__init__(name, config)
        self.client = client
        self.timeout = config.timeout
        # Rebuilds the client with a shorter timeout (cluster mode); None for a client
        # handed in (tests), whose timeouts are its maker's.
        self.make_client: Callable[[float], ElasticLoadBalancingv2Client] | None = None
        self.budget = CallBudget(config.max_calls_per_second)

    @classmethod
    def create(cls, name: str, config: Any) -> Elbv2Provider:
        provider = cls(name, config, aws.client("elbv2", config.region, config.timeout))
        provider.make_client = functools.partial(aws.client, "elbv2", config.region)
        return provider

    def bound_calls(self, seconds: float) -> None:
        timeout = aws.bounded_timeout(self.config.timeout, seconds)
        if timeout < self.timeout and self.make_client is not None:
            self.client, self.timeout = self.make_client(timeout), timeout

    @classmethod
    def validate_service(cls, service: ServiceConfig, config: Any) -> list[tuple[str, str]]:
        """One listener or rule ARN, target group ARNs, all in the provider's region."""
        region = config.region if isinstance(config, Elbv2Config) else None
        problems = _object_problems(_keys(service), region)
        owner: dict[str, str] = {}
        for s_index, site in enumerate(service.sites):
            for t_index, target in enumerate(site.targets):
                path = f"sites[{s_index}].targets[{t_index}]"
                problem = _arn_problem(target, TARGET_GROUP_ARN, "target group", region)
                if problem is None and target in owner:
                    problem = f"target group {target} is already in site {owner[target]}"
                if problem is not None:
                    problems.append((path, problem))
                owner.setdefault(target, site.name)
        if len(owner) > MAX_TARGET_GROUPS:
            problems.append(
                (
                    "sites",
                    f"a forward action holds at most {MAX_TARGET_GROUPS} target groups, "
                    f"the sites name {len(owner)}",
                )
            )
        return problems

    async def _call(
        self, what: str, fn: Callable[..., T], *, write: bool = False, **kwargs: Any
    ) -> T:
        """The one edge to ELBv2: every call goes through ``aws.call``, and a ``write``
        asks the provider's authority first, with the call's own timeout."""
        label = f"elbv2 {what}"
        guard = (lambda: self.may_write(label, aws.call_time(self.timeout))) if write else None
        result: T = await aws.call(label, self.budget, fn, TRANSIENT_CODES, guard=guard, **kwargs)
        return result

    # -- read -------------------------------------------------------------------------------

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """One answer per site found in the forward action, with the weight its groups hold.

        A site none of whose groups is in the action has no answer (the plan creates it); a
        site whose groups hold different weights is read with weight ``None``, which no
        desired answer has. A missing listener or rule, or one without a forward action, maps
        to ``()``: the apply names it, and the other services still flip.
        """
        actions = await self._actions(services)
        return {
            s.name: _answers(s, _forward_weights(actions[s.name])) if s.name in actions else ()
            for s in services
        }

    async def _actions(
        self, services: Sequence[ServiceConfig]
    ) -> dict[str, list[ActionOutputTypeDef]]:
        """Each found service's current action list: listeners in one call, rules in another."""
        listeners = [s for s in services if _keys(s).listener_arn is not None]
        rules = [s for s in services if _keys(s).listener_arn is None]
        found: dict[str, list[ActionOutputTypeDef]] = {}
        if listeners:
            found.update(await self._describe(listeners, "DescribeListeners"))
        if rules:
            found.update(await self._describe(rules, "DescribeRules"))
        return {s.name: found[_arn(s)] for s in services if _arn(s) in found}

    async def _describe(
        self, services: Sequence[ServiceConfig], what: str
    ) -> dict[str, list[ActionOutputTypeDef]]:
        arns = sorted({_arn(s) for s in services})
        try:
            return await self._describe_arns(arns, what)
        except PermanentProviderError as exc:
            if exc.kind not in NOT_FOUND:
                raise
            if len(arns) == 1:
                return {}
        # AWS fails the whole call for one unknown ARN: ask one by one to keep the others.
        found = {}
        for arn in arns:
            found.update(await self._describe([s for s in services if _arn(s) == arn], what))
        return found

    async def _describe_arns(self, arns: list[str], what: str) -> dict[str, list[Any]]:
        """All of ``arns`` in as few calls as ELBv2 pages them (``PAGE_SIZE`` a call)."""
        found: dict[str, list[Any]] = {}
        params: dict[str, Any] = {"PageSize": PAGE_SIZE}
        while True:
            if what == "DescribeListeners":
                reply: Any = await self._call(
                    what, self.client.describe_listeners, ListenerArns=arns, **params
                )
                found.update(
                    (x["ListenerArn"], x.get("DefaultActions", [])) for x in reply["Listeners"]
                )
            else:
                reply = await self._call(what, self.client.describe_rules, RuleArns=arns, **params)
                found.update((r["RuleArn"], r.get("Actions", [])) for r in reply["Rules"])
            if not reply.get("NextMarker"):
                return found
            params["Marker"] = reply["NextMarker"]

    # -- apply ------------------------------------------------------------------------------

    async def _apply(self, plan: Plan) -> Receipt:
        """Rewrite the forward action of each planned listener or rule in one call each.

        The action list is read again just before the write (ModifyListener replaces the whole
        list) and sent back with only the sites' target group weights changed, so one call
        moves all of a service's traffic at once and is idempotent. A service that fails does
        not stop the others; the errors are raised together afterwards (permanent first).
        """
        actions = await self._actions(plan.services)
        arns: list[str] = []
        errors: dict[str, ProviderError] = {}
        for service in plan.services:
            try:
                await self._write(service, actions.get(service.name), plan)
                arns.append(_arn(service))
            except ProviderError as exc:
                errors[service.name] = exc
        if errors:
            permanent = [e for e in errors.values() if isinstance(e, PermanentProviderError)]
            text = "; ".join(str(e) for e in errors.values())
            failed = frozenset(errors)
            if permanent:
                raise PermanentProviderError(text, kind=permanent[0].kind, services=failed)
            first = next(iter(errors.values()))
            raise TransientProviderError(text, kind=first.kind, services=failed)
        return Receipt(self.name, tuple(arns), time.time(), in_sync=True)

    async def _write(
        self, service: ServiceConfig, actions: list[ActionOutputTypeDef] | None, plan: Plan
    ) -> None:
        arn = _arn(service)
        if actions is None:
            raise PermanentProviderError(
                f"elbv2 {self.name}: service {service.name}: no {_kind(service)} {arn}",
                kind="NotFound",
            )
        new = _rewrite(service, actions, _planned_weights(plan, service))
        if _keys(service).listener_arn is not None:
            await self._call(
                "ModifyListener",
                self.client.modify_listener,
                write=True,
                ListenerArn=arn,
                DefaultActions=new,
            )
        else:
            await self._call(
                "ModifyRule", self.client.modify_rule, write=True, RuleArn=arn, Actions=new
            )

    async def check_live(self, services: Sequence[ServiceConfig]) -> list[str]:
        """Every listener, rule and target group exists; no foreign group takes traffic."""
        key = f"providers.{self.name}"
        try:
            actions = await self._actions(services)
            problems = await self._missing_target_groups(services)
        except Exception as exc:  # reported, not raised: this is a diagnostic
            return [f"{key}: {exc}"]
        for service in services:
            if service.name not in actions:
                problems.append(f"service {service.name}: no {_kind(service)} {_arn(service)}")
                continue
            try:
                weights = _weights(service, actions[service.name])
            except PermanentProviderError as exc:
                problems.append(str(exc))
                continue
            problems.extend(_foreign(service, weights))
        return [f"{key}: {p}" for p in problems]

    async def _missing_target_groups(self, services: Sequence[ServiceConfig]) -> list[str]:
        wanted = sorted({t for s in services for site in s.sites for t in site.targets})
        missing = []
        for arn in wanted:
            try:
                await self._call(
                    "DescribeTargetGroups",
                    self.client.describe_target_groups,
                    TargetGroupArns=[arn],
                )
            except PermanentProviderError as exc:
                if exc.kind != "TargetGroupNotFound":
                    raise
                missing.append(f"no target group {arn}")
        return missing

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


def _arn(service: ServiceConfig) -> str:
    keys = _keys(service)
    return str(keys.listener_arn or keys.rule_arn)


def _kind(service: ServiceConfig) -> str:
    return "listener" if _keys(service).listener_arn is not None else "listener rule"


def _foreign(service: ServiceConfig, weights: Mapping[str, int]) -> list[str]:
    ours = {t for site in service.sites for t in site.targets}
    return [
        f"service {service.name}: target group {arn} (weight {weight}) is in the forward "
        "action but in no site: trafficflip does not steer it"
        for arn, weight in weights.items()
        if arn not in ours and weight
    ]


def _object_problems(keys: Elbv2Service, region: str | None) -> list[tuple[str, str]]:
    if keys.listener_arn is not None and keys.rule_arn is not None:
        return [("rule_arn", "set listener_arn or rule_arn, not both")]
    if keys.listener_arn is not None:
        problem = _arn_problem(keys.listener_arn, LISTENER_ARN, "listener", region)
        return [("listener_arn", problem)] if problem else []
    if keys.rule_arn is not None:
        problem = _arn_problem(keys.rule_arn, RULE_ARN, "listener rule", region)
        return [("rule_arn", problem)] if problem else []
    return [("listener_arn", "required for an elbv2 service (or rule_arn for a listener rule)")]


def _arn_problem(arn: str, pattern: re.Pattern[str], kind: str, region: str | None) -> str | None:
    match = pattern.fullmatch(arn)
    if match is None:
        return f"{arn!r} is not a {kind} ARN"
    if region is not None and match.group("region") != region:
        return f"{arn} is in {match.group('region')}, the provider's region is {region}"
    return None


def _forward(actions: Sequence[ActionOutputTypeDef]) -> ActionOutputTypeDef | None:
    return next((a for a in actions if a.get("Type") == "forward"), None)


def _forward_weights(actions: Sequence[ActionOutputTypeDef]) -> dict[str, int]:
    """Target group ARN -> weight in the forward action (a plain forward to one group is 1)."""
    action = _forward(actions)
    if action is None:
        return {}
    groups = action.get("ForwardConfig", {}).get("TargetGroups", [])
    if groups:
        return {str(g.get("TargetGroupArn")): int(g.get("Weight", 1)) for g in groups}
    arn = action.get("TargetGroupArn")
    return {arn: 1} if arn else {}


def _weights(service: ServiceConfig, actions: Sequence[ActionOutputTypeDef]) -> dict[str, int]:
    if _forward(actions) is None:
        raise PermanentProviderError(
            f"elbv2: service {service.name}: {_kind(service)} {_arn(service)} has no forward "
            "action to weight",
            kind="NoForwardAction",
        )
    return _forward_weights(actions)


def _answers(service: ServiceConfig, weights: Mapping[str, int]) -> tuple[Answer, ...]:
    answers = []
    for site in service.sites:
        held = {weights.get(t) for t in site.targets}
        if held == {None}:
            continue
        weight = held.pop() if len(held) == 1 else None
        answers.append(Answer(site.name, frozenset(site.targets), weight))
    return tuple(answers)


def _planned_weights(plan: Plan, service: ServiceConfig) -> dict[str, int]:
    """Target group ARN -> the weight the plan gives its site; checked against ELBv2's range."""
    weights: dict[str, int] = {}
    for change in plan.for_service(service.name):
        if change.after is None:
            continue
        weights.update(dict.fromkeys(change.after.targets, change.after.weight or 0))
    return weights


def _rewrite(
    service: ServiceConfig, actions: Sequence[ActionOutputTypeDef], weights: Mapping[str, int]
) -> list[ActionOutputTypeDef]:
    """The action list with new target group weights and every other setting as read."""
    current = _weights(service, actions)
    merged = {**current, **weights}
    groups: list[TargetGroupTupleTypeDef] = [
        {"TargetGroupArn": arn, "Weight": weight} for arn, weight in merged.items()
    ]
    rewritten: list[ActionOutputTypeDef] = []
    for action in actions:
        action = action.copy()
        if action.get("Type") == "forward":
            forward = action.get("ForwardConfig", {}).copy()
            forward["TargetGroups"] = groups
            action["ForwardConfig"] = forward
            # With several groups the plain TargetGroupArn must go: ELBv2 accepts both only
            # when they name the same single group.
            action.pop("TargetGroupArn", None)
        elif action.get("Type") == "authenticate-oidc":
            # Describe* never returns the client secret; without this flag it would be lost.
            oidc = action.get("AuthenticateOidcConfig")
            if oidc is not None:
                action["AuthenticateOidcConfig"] = {**oidc, "UseExistingClientSecret": True}
        rewritten.append(action)
    return rewritten
