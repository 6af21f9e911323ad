"""HAProxy: a service is a backend, each site's targets are servers in it.

A site's share (0-100) becomes the weight of every one of its servers, written with
``set server BACKEND/SERVER weight N`` over the runtime API of every configured instance and
read back from ``show servers state BACKEND`` (the ``srv_uweight`` column). Weight 0 takes a
server out of rotation for new requests while its established connections finish (a drain).
trafficflip writes weights only: admin states (``drain``/``maint``) stay the operator's.

HAProxy keeps runtime weights in memory only: a restarted instance is back at its configured
weights, which ``read`` reports as drift, so the next reconcile writes the shares again.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trafficflip.backend.budget import CallBudget
from trafficflip.backend.provider import Provider, Receipt
from trafficflip.config.durations import Duration
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Change, Plan
from trafficflip.errors import PermanentProviderError, ProviderError, TransientProviderError

from ._haproxy_api import (
    InstanceConfig,
    RuntimeApi,
    parse_servers_state,
    split_responses,
)

__all__ = ["HaproxyConfig", "HaproxyProvider", "HaproxyService", "split_responses"]

T = TypeVar("T")
# HAProxy's own rule for proxy and server names; it also keeps ';' (the runtime API's command
# separator), '/' (backend/server), spaces and newlines out of the commands we build. Always
# fullmatch: with match, "$" also matches before a trailing newline, which ends the command.
HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
NO_BACKEND = "Can't find backend."
# Backend -> server -> srv_uweight, or None when the instance has no such backend.
BackendState = dict[str, dict[str, int] | None]


class HaproxyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["haproxy"]
    socket: str | None = None
    address: str | None = None
    instances: list[InstanceConfig] = []
    timeout: Duration = 2.0
    # Runtime-API sessions a second, per instance. A batch is one session (one command line;
    # HAProxy 2.6 took 3,000 commands, 80 KB, in one line here), so this bounds how often
    # trafficflip connects, not how much it changes. The stats socket serves 10 connections
    # at once by default (`stats maxconn`).
    max_calls_per_second: Annotated[float, Field(gt=0)] = 20.0

    @model_validator(mode="after")
    def _endpoints(self) -> HaproxyConfig:
        single = self.socket is not None or self.address is not None
        if self.instances and single:
            raise ValueError("set either socket/address or instances, not both")
        if not self.instances and not single:
            raise ValueError(
                "needs the runtime API: socket (a unix socket path), address (host:port) "
                "or instances (a list of either)"
            )
        if not self.instances:
            InstanceConfig(socket=self.socket, address=self.address)  # the same checks
        return self

    def endpoints(self) -> list[InstanceConfig]:
        if self.instances:
            return list(self.instances)
        return [InstanceConfig(socket=self.socket, address=self.address)]


class HaproxyService(BaseModel):
    """The key a haproxy service adds: the backend whose servers are the sites' targets."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: str | None = None

    @field_validator("backend")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not HAPROXY_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a HAProxy backend name")
        return value


def backend_of(service: ServiceConfig) -> str:
    """The service's backend name (required by ``validate_service``)."""
    return str(service.adapter_keys(HaproxyService).backend)


class HaproxyProvider(Provider):
    """Server weights in one backend per service, on one or several HAProxy instances."""

    TYPE = "haproxy"
    KIND = "pool"
    SUPPORTS_WEIGHTS = True
    MAX_WEIGHT = 256  # `set server ... weight` refuses anything above
    Config = HaproxyConfig
    Service = HaproxyService

    def __init__(
        self, name: str, config: HaproxyConfig, apis: Sequence[RuntimeApi] | None = None
    ) -> None:
        super().__init__(name, config)
        self.apis = list(
            apis
            or [
                RuntimeApi(e, config.timeout, CallBudget(config.max_calls_per_second))
                for e in config.endpoints()
            ]
        )
        # The weight last written per (backend, server), to tell which instance forgot it.
        self._written: dict[tuple[str, str], int] = {}

    def bound_calls(self, seconds: float) -> None:
        # RuntimeApi.run cuts the whole exchange at its timeout.
        for api in self.apis:
            api.timeout = min(api.timeout, seconds)

    @classmethod
    def validate_service(cls, service: ServiceConfig, config: object) -> list[tuple[str, str]]:
        """A backend is required, site targets are server names, each in one site only."""
        problems: list[tuple[str, str]] = []
        if service.adapter_keys(HaproxyService).backend is None:
            problems.append(("backend", "required for a haproxy service (the backend's name)"))
        owner: dict[str, str] = {}
        for s_index, site in enumerate(service.sites):
            for t_index, target in enumerate(site.targets):
                path = f"sites[{s_index}].targets[{t_index}]"
                if not HAPROXY_NAME.fullmatch(target):
                    problems.append((path, f"{target!r} is not a HAProxy server name"))
                elif target in owner:
                    problems.append((path, f"server {target} is already in site {owner[target]}"))
                owner.setdefault(target, site.name)
        return problems

    # -- read -------------------------------------------------------------------------------

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """One answer per configured site: the weight all its servers hold on every instance.

        A site whose servers or instances disagree, or with an instance unreachable, is read
        with weight ``None``, which no desired answer has: the plan rewrites it. A site whose
        servers exist on no instance (or a missing backend) has no answer: the apply then
        quotes HAProxy's refusal, and the other services still flip. No reachable instance at
        all raises ``TransientProviderError``. Sets ``lagging_instances``.
        """
        states, unreachable = await self._read_all(_backends(services))
        complete = not unreachable
        answers = {s.name: _answers(s, states, complete) for s in services}
        self.lagging_instances = tuple(unreachable) + self._differing(services, states)
        return answers

    async def _read_all(
        self, backends: list[str]
    ) -> tuple[dict[str, BackendState], dict[str, str]]:
        """Every instance's state, and the reason for each instance that did not answer."""
        states: dict[str, BackendState] = {}
        unreachable: dict[str, str] = {}
        for api, result in await self._everywhere(lambda api: self._read_instance(api, backends)):
            if isinstance(result, TransientProviderError):
                unreachable[api.label] = str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                states[api.label] = result
        if not states:
            reasons = "; ".join(unreachable.values())
            raise TransientProviderError(
                f"haproxy {self.name}: no instance reachable: {reasons}", kind="unreachable"
            )
        return states, unreachable

    async def _read_instance(self, api: RuntimeApi, backends: list[str]) -> BackendState:
        responses = await api.run([f"show servers state {b}" for b in backends])
        state: BackendState = {}
        for backend, response in zip(backends, responses, strict=True):
            if response.strip() == NO_BACKEND:
                state[backend] = None
                continue
            try:
                state[backend] = parse_servers_state(response)
            except ValueError as exc:
                raise PermanentProviderError(
                    f"haproxy {api.label}: show servers state {backend}: {exc}", kind="protocol"
                ) from None
        return state

    def _differing(
        self, services: Sequence[ServiceConfig], states: Mapping[str, BackendState]
    ) -> tuple[str, ...]:
        """Instances holding other weights than the ones last written (or than the majority)."""
        lagging: list[str] = []
        for backend, server in _servers(services):
            held = {label: _weight(state, backend, server) for label, state in states.items()}
            expected = self._written.get((backend, server))
            if expected is None:
                expected = Counter(held.values()).most_common(1)[0][0]
            lagging.extend(label for label, weight in held.items() if weight != expected)
        return tuple(dict.fromkeys(lagging))

    # -- apply ------------------------------------------------------------------------------

    async def _apply(self, plan: Plan) -> Receipt:
        """Write every changed site's weight to all its servers on every reachable instance.

        Idempotent (absolute weights). Raised weights are written before lowered ones so a
        failover never passes through a moment with no server in rotation. An instance that
        refuses a command raises ``PermanentProviderError``; an unreachable instance, after
        the others were updated, raises ``TransientProviderError`` naming it.
        """
        writes = _writes(plan)
        commands = [f"set server {w.backend}/{w.server} weight {w.weight}" for w in writes]
        results = await self._everywhere(
            lambda api: api.run(commands, functools.partial(self.may_write, f"set {api.label}"))
        )
        self._written.update({(w.backend, w.server): w.weight for w in writes})
        refused, unreachable = _outcomes(list(zip(writes, commands, strict=True)), results)
        self.lagging_instances = tuple(unreachable)
        if refused:
            # HAProxy ran every other command of the line: only these services failed.
            services = {service for service, _ in refused}
            raise PermanentProviderError(
                "; ".join(text for _, text in refused),
                kind="refused",
                services=None if None in services else frozenset(str(s) for s in services),
            )
        if unreachable:
            updated = [api.label for api in self.apis if api.label not in unreachable]
            lagging = "; ".join(f"{label} lags ({why})" for label, why in unreachable.items())
            raise TransientProviderError(
                f"haproxy {self.name}: {lagging}; updated {', '.join(updated) or 'nothing'}",
                kind="lagging",
            )
        submitted = time.time()
        ids = tuple(f"{backend_of(s)}@{submitted:.3f}" for s in plan.services)
        return Receipt(self.name, ids, submitted, in_sync=True)

    async def _everywhere(
        self, call: Callable[[RuntimeApi], Awaitable[T]]
    ) -> list[tuple[RuntimeApi, T | BaseException]]:
        """Run ``call`` on every instance at once: each instance's result or error."""
        results = await asyncio.gather(*(call(api) for api in self.apis), return_exceptions=True)
        return list(zip(self.apis, results, strict=True))

    async def check_live(self, services: Sequence[ServiceConfig]) -> list[str]:
        """Every instance answers and has each configured backend and server."""
        key = f"providers.{self.name}"
        backends = _backends(services)
        problems: list[str] = []
        for api, result in await self._everywhere(lambda api: self._read_instance(api, backends)):
            if isinstance(result, BaseException):
                problems.append(f"{key}: {result}")
            else:
                problems.extend(f"{key}: {p}" for p in _missing(api.label, services, result))
        return problems


def _outcomes(
    commands: list[tuple[Write, str]],
    results: Sequence[tuple[RuntimeApi, list[str] | BaseException]],
) -> tuple[list[tuple[str | None, str]], dict[str, str]]:
    """HAProxy's refusals as (service, text), the service ``None`` when a whole instance
    refused; and the reason each unreachable instance gave."""
    refused: list[tuple[str | None, str]] = []
    unreachable: dict[str, str] = {}
    for api, result in results:
        if isinstance(result, TransientProviderError):
            unreachable[api.label] = str(result).removeprefix(f"haproxy {api.label}: ")
        elif isinstance(result, ProviderError):
            refused.append((None, str(result)))
        elif isinstance(result, BaseException):
            raise result
        else:
            refused.extend(
                (write.service, f"haproxy {api.label}: {write.who}: {command}: {response}")
                for (write, command), response in zip(commands, result, strict=True)
                if response.strip()
            )
    return refused, unreachable


def _backends(services: Sequence[ServiceConfig]) -> list[str]:
    return sorted({backend_of(s) for s in services})


def _servers(services: Sequence[ServiceConfig]) -> list[tuple[str, str]]:
    return [(backend_of(s), t) for s in services for site in s.sites for t in site.targets]


def _weight(state: BackendState, backend: str, server: str) -> int | None:
    servers = state.get(backend)
    return None if servers is None else servers.get(server)


def _missing(label: str, services: Sequence[ServiceConfig], state: BackendState) -> list[str]:
    """Configured backends and servers an instance does not have."""
    where = f"haproxy {label}: "
    problems: list[str] = []
    for service in services:
        backend = backend_of(service)
        servers = state.get(backend)
        if servers is None:
            problems.append(f"{where}service {service.name}: no backend {backend!r}")
            continue
        absent = [t for site in service.sites for t in site.targets if t not in servers]
        if absent:
            have = ", ".join(sorted(servers)) or "none"
            problems.append(
                f"{where}service {service.name}: backend {backend} has no server "
                f"{', '.join(absent)} (it has: {have})"
            )
    return problems


def _answers(
    service: ServiceConfig, states: Mapping[str, BackendState], complete: bool
) -> tuple[Answer, ...]:
    answers = []
    backend = backend_of(service)
    for site in service.sites:
        held = {_weight(s, backend, t) for s in states.values() for t in site.targets}
        if held == {None}:
            continue
        weight = held.pop() if complete and len(held) == 1 else None
        answers.append(Answer(site.name, frozenset(site.targets), weight))
    return tuple(answers)


class Write(NamedTuple):
    """One server's new weight, and the service and site it is for."""

    service: str
    site: str | None
    backend: str
    server: str
    weight: int

    @property
    def who(self) -> str:
        return f"service {self.service} site {self.site}"


def _writes(plan: Plan) -> list[Write]:
    """A write for every server of every changed site, raised weights first."""
    changes = sorted((c for c in plan.changes if c.after is not None), key=_lowers)
    writes: list[Write] = []
    for change in changes:
        assert change.after is not None
        weight = change.after.weight or 0
        backend = backend_of(change.service)
        writes.extend(
            Write(change.service.name, change.site, backend, t, weight)
            for t in sorted(change.after.targets)
        )
    return writes


def _lowers(change: Change) -> bool:
    before = change.before.weight if change.before is not None else None
    after = change.after.weight if change.after is not None else None
    return before is not None and (after or 0) < before
