"""The provider contract: read the answers a backend holds, apply a plan to it.

Adapters live in ``trafficflip.providers`` (or any package registering a class under the
``trafficflip.providers`` entry-point group). The core never imports an adapter.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel

from trafficflip.config.schema import NoServiceKeys, ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Change, Plan, check_safe
from trafficflip.errors import NotLeaderError, ProviderError, UnsafePlanError

log = logging.getLogger("trafficflip.backend.provider")


class Authority(Protocol):
    """Whether this instance may change a backend now: the one port every backend write asks.

    A single instance always may. In cluster mode it is the leader's lease
    (``cluster/election.py``): a write is started only if the lease provably outlasts it.
    """

    def may_act(self, timeout: float) -> bool:
        """True if a backend call that may take up to ``timeout`` seconds can start now."""
        ...

    def call_limit(self) -> float:
        """The longest call this authority can ever vouch for (seconds; ``inf``: any)."""
        ...


class Always:
    """The authority of a single instance: nothing else writes, every call may start."""

    def may_act(self, timeout: float) -> bool:
        return True

    def call_limit(self) -> float:
        return math.inf


ALWAYS = Always()


@dataclass(frozen=True)
class Receipt:
    """What a provider returns for an applied plan; its ``change_ids`` are confirmed later."""

    provider: str
    change_ids: tuple[str, ...]
    submitted_at: float
    in_sync: bool = True


class Provider(ABC):
    """Base class of every adapter.

    Capabilities are declared, not discovered: ``KIND`` says whether a service on this
    provider is a DNS name (``record``/``type``/``ttl``) or a pool; ``SUPPORTS_WEIGHTS``
    whether a ramp is expressed as exact weights or as mixed answers; ``MAX_WEIGHT`` the
    largest weight the backend accepts; ``PLAN_URGENT_FROM_KNOWN`` and ``WRITE_SPACING``
    how the provider sync spends a quota-bound backend's calls in a mass failover.

    ``Config`` validates the provider's settings (``providers.NAME``); ``Service`` validates
    the service keys the provider owns (a pool's ``backend``), written flat in each service
    next to the core's keys. Read them with ``service.adapter_keys(cls.Service)``.
    """

    TYPE: ClassVar[str]
    KIND: ClassVar[Literal["dns", "pool"]] = "dns"
    SUPPORTS_WEIGHTS: ClassVar[bool] = True
    MAX_WEIGHT: ClassVar[int] = 100
    # A failover may be planned from the answers the sync last read or wrote, without a read
    # first: for a backend whose reads spend the same quota as its writes (Route53 reads a
    # zone 300 records a call). Drift is still found by the reconcile, which always reads.
    PLAN_URGENT_FROM_KNOWN: ClassVar[bool] = False
    # Seconds between the starts of two writes: what is decided meanwhile joins the next
    # call (a mass failover in few calls). The first write after a quiet spell goes at once.
    WRITE_SPACING: ClassVar[float] = 0.0
    # Seconds between attempts of a failover that failed (jittered from half of this): the
    # call rate the backend allows one writer. A failover never waits behind a backoff.
    URGENT_RETRY_SPACING: ClassVar[float] = 0.2
    Config: ClassVar[type[BaseModel]]
    Service: ClassVar[type[BaseModel]] = NoServiceKeys

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config
        # Instances of a backend that do not hold the last answers (one of several HAProxy
        # processes down or restarted); set by read()/_apply(), shown by status.
        self.lagging_instances: tuple[str, ...] = ()
        self.authority: Authority = ALWAYS

    def authorize(self, authority: Authority) -> None:
        """Ask ``authority`` before every backend write from now on; the core calls this
        (cluster mode: the leader's lease), adapters never do. Call timeouts are bounded
        by what the authority can vouch for, so a write can be started at all."""
        self.authority = authority
        self.bound_calls(authority.call_limit())

    def bound_calls(self, seconds: float) -> None:  # noqa: B027 - optional hook
        """Hook: make one backend write take at most ``seconds`` (its timeouts lowered).
        Called by ``authorize``; ``math.inf`` leaves the configured timeouts."""

    def may_write(self, what: str, timeout: float) -> None:
        """Raise ``NotLeaderError`` unless a write of up to ``timeout`` seconds may start.

        Adapters call this at their one call edge, right before each backend write is sent
        (after any quota wait: the lease may have run out meanwhile), never once per apply.
        """
        if not self.authority.may_act(timeout):
            log.error("fencing_refused provider=%s call=%s timeout=%gs", self.name, what, timeout)
            raise NotLeaderError(
                f"{self.name}: {what} not sent: the lease may not outlast a {timeout:g}s call"
            )

    @classmethod
    def create(cls, name: str, config: Any) -> Provider:
        """Build the provider with real clients from its validated config."""
        return cls(name, config)

    @classmethod
    def validate_service(cls, service: ServiceConfig, config: Any) -> list[tuple[str, str]]:
        """Provider-specific problems with a service, as (key path in the service, reason).

        Called once at start and by ``check-config``, after the service's keys passed
        ``Service``; must not do I/O.
        """
        return []

    @abstractmethod
    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """Return the answers the backend holds for each service, keyed by service name.

        Reads only the names/objects the services configure; a missing one maps to ``()``.
        Idempotent and side-effect free. Raises ``TransientProviderError`` or
        ``PermanentProviderError``.
        """

    @abstractmethod
    async def _apply(self, plan: Plan) -> Receipt:
        """Make the backend hold the plan's ``after`` answers.

        Called only with a non-empty plan that passed the safety checks. Must change nothing
        outside the plan, must never leave half of one zone's/pool's changes applied when
        the backend offers atomic batches, and must build fresh requests on every call (it
        may be called again with a new plan after a ``TransientProviderError``).
        """

    async def apply(self, plan: Plan) -> Receipt | None:
        """Check, log and apply ``plan`` once. Never retries: the engine's provider sync owns
        retry, backoff and re-batching (a throttled batch is planned again, not resent).

        Safety is judged per service: the changes of a service that breaks a rule are left
        out, the rest is applied, then ``UnsafePlanError`` names the refused services in
        ``services`` (one service, say with shares for sites just renamed, must not block
        the provider's others). A ``ProviderError`` from the rest names its own services
        and the refused ones together.
        """
        if not plan:
            return None
        refused = self._refusals(plan)
        for name, reason in refused.items():
            log.error("unsafe_plan provider=%s service=%s reason=%r", self.name, name, reason)
        safe = _without(plan, refused)
        receipt = None
        if safe:
            log.info("apply provider=%s %s", self.name, safe.summary)
            try:
                receipt = await self._apply(safe)
            except ProviderError as exc:
                if refused and exc.services is not None:
                    exc.services = exc.services | frozenset(refused)
                raise
        if refused:
            raise UnsafePlanError("; ".join(refused.values()), services=frozenset(refused))
        return receipt

    def _refusals(self, plan: Plan) -> dict[str, str]:
        """Service name -> why its changes are refused, for every unsafe service."""
        refused: dict[str, str] = {}
        for service in plan.services:
            try:
                # A plan built without its desired answers cannot be checked: refuse it.
                check_safe(service, plan.desired.get(service.name, ()))
            except UnsafePlanError as exc:
                refused[service.name] = str(exc)
        for change in plan.changes:
            reason = self._weight_problem(change) or self.refuse_change(change)
            if reason is not None:
                refused.setdefault(change.service.name, reason)
        return refused

    def _weight_problem(self, change: Change) -> str | None:
        """Weights the backend cannot hold (some emulations accept them silently)."""
        weight = change.after.weight if change.after is not None else None
        if weight is not None and not 0 <= weight <= self.MAX_WEIGHT:
            return (
                f"{self.TYPE} {self.name}: weight {weight} for {change.service.name} "
                f"{change.site} is outside 0-{self.MAX_WEIGHT}"
            )
        return None

    def refuse_change(self, change: Change) -> str | None:
        """Hook: why this backend must not make ``change`` (its service is then refused),
        or ``None``. Pure; called by ``apply`` before anything is sent."""
        return None

    async def confirm(self, receipt: Receipt) -> bool:
        """True once the change has reached every server that answers for it."""
        return True

    async def check_live(self, services: Sequence[ServiceConfig]) -> list[str]:
        """Problems with the backend objects the services name (``check-config --live``)."""
        try:
            await self.read(services)
        except Exception as exc:  # reported, not raised: this is a diagnostic
            return [f"providers.{self.name}: {exc}"]
        return []

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release clients and sockets."""


class ReadOnlyProvider(Provider):
    """Wraps a provider for previews: reads go through, every apply is refused.

    ``plan`` runs the engine over these, so no timing or code path can change a backend.
    """

    def __init__(self, inner: Provider) -> None:
        super().__init__(inner.name, inner.config)
        self.inner = inner

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """The wrapped provider's read."""
        return await self.inner.read(services)

    async def apply(self, plan: Plan) -> Receipt | None:
        """Refuse: a preview never writes."""
        if not plan:
            return None
        raise UnsafePlanError(f"{self.name}: read-only preview, refusing to apply {plan.summary}")

    async def _apply(self, plan: Plan) -> Receipt:
        raise UnsafePlanError(f"{self.name}: read-only preview")

    async def close(self) -> None:
        await self.inner.close()


def _without(plan: Plan, services: Mapping[str, object]) -> Plan:
    """``plan`` minus the changes and desired answers of ``services``."""
    if not services:
        return plan
    changes = tuple(c for c in plan.changes if c.service.name not in services)
    desired = {k: v for k, v in plan.desired.items() if k not in services}
    return Plan(changes, desired, plan.read_first)


# What a wrapper must declare as the wrapped provider does: the engine and the loader read these.
CAPABILITIES = (
    "TYPE",
    "KIND",
    "SUPPORTS_WEIGHTS",
    "MAX_WEIGHT",
    "PLAN_URGENT_FROM_KNOWN",
    "WRITE_SPACING",
    "URGENT_RETRY_SPACING",
    "Config",
    "Service",
)
W = TypeVar("W", bound=Provider)


def wrapper_class(provider: Provider, base: type[W], prefix: str) -> type[W]:
    """A subclass of ``base`` (a wrapper) declaring the capabilities of ``provider``."""
    cls = type(provider)
    capabilities = {name: getattr(cls, name) for name in CAPABILITIES}
    wrapper: type[W] = type(f"{prefix}{cls.__name__}", (base,), capabilities)
    return wrapper


def read_only(provider: Provider) -> Provider:
    """``provider`` for a preview: the same capabilities, reads only."""
    return wrapper_class(provider, ReadOnlyProvider, "ReadOnly")(provider)
