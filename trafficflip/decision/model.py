"""The runtime model: frozen values that flow probes -> health -> decide -> plan -> provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    """What trafficflip believes about a check or a site."""

    UP = "up"
    DOWN = "down"
    # Not enough probes yet (start-up): never a reason to move traffic, in either direction.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome. ``reason`` is short and stable enough to count by.

    An ``inconclusive`` result (a timeout while trafficflip's own event loop was overloaded)
    says nothing about the site and counts neither way.
    """

    ok: bool
    reason: str
    latency: float
    at: float
    inconclusive: bool = False


@dataclass(frozen=True)
class SiteHealth:
    """A site's status, since when it has held it, and why (the failing checks)."""

    status: Status
    since: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class ServiceHealth:
    """A service's health: each site's, and its failback gates' (all of them must be up)."""

    sites: dict[str, SiteHealth]
    gates: Status = Status.UP


class RampReason(StrEnum):
    """Why traffic is moving along the steps; names the events it produces."""

    FAILBACK = "failback"
    PLANNED_MOVE = "planned_move"  # an operator's pin (failover --to)
    DRAIN = "drain"


@dataclass(frozen=True)
class Ramp:
    """A gradual move of traffic from the service's members to ``to``.

    ``step`` indexes the service's ``failback.steps``; the step's share has been held
    since ``since`` (monotonic seconds in the running service; the store keeps wall time).
    """

    to: tuple[str, ...]
    step: int
    since: float
    reason: RampReason = RampReason.FAILBACK


@dataclass(frozen=True)
class ServiceState:
    """What trafficflip has decided for one service; persisted after every change.

    ``members`` are the sites serving their full share (one site in active-passive).
    ``shares`` are the desired percentages per site, ``None`` before the first decision.
    ``applied_at`` is when the provider confirmed the current ``shares``; a ramp step is
    held from then, never from the decision alone.
    """

    members: tuple[str, ...] = ()
    ramp: Ramp | None = None
    shares: dict[str, int] | None = None
    applied_at: float | None = None
    pinned: str | None = None
    drained: tuple[str, ...] = ()
    failback_approved: bool = False
    held: bool = False
    order: tuple[str, ...] | None = None
    all_down: bool = False


class EventKind(StrEnum):
    """Every kind of journal entry; notification targets filter on these."""

    INITIAL = "initial"
    FAILOVER = "failover"
    SITE_OUT = "site_out"
    ALL_DOWN = "all_down"
    RECOVERED = "recovered"
    FAILBACK_STARTED = "failback_started"
    FAILBACK_COMPLETED = "failback_completed"
    FAILBACK_ABORTED = "failback_aborted"
    PLANNED_MOVE_STARTED = "planned_move_started"
    PLANNED_MOVE_COMPLETED = "planned_move_completed"
    DRAIN_STARTED = "drain_started"
    DRAIN_COMPLETED = "drain_completed"
    RAMP_STEP = "ramp_step"
    RAMP_CANCELLED = "ramp_cancelled"
    COMMAND = "command"
    PROVIDER_CHANGE = "provider_change"
    DRIFT = "drift"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_RECOVERED = "provider_recovered"
    CONFIG_RELOADED = "config_reloaded"
    SERVICE_ADDED = "service_added"
    SERVICE_REMOVED = "service_removed"
    SITE_REMOVED = "site_removed"
    ERROR = "error"


# Events an operator is woken for: logged at WARNING.
ALARMS = frozenset({EventKind.FAILOVER, EventKind.ALL_DOWN, EventKind.DRIFT})


@dataclass(frozen=True)
class Event:
    """Something a decision did, for the log and the journal."""

    kind: EventKind
    message: str
    site: str | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of ``decide()``: the new state and what happened on the way."""

    state: ServiceState
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Answer:
    """One answer a provider holds for a service.

    On a weighted backend there is one answer per site (``site`` is its name); a
    backend that can only hold sets has one answer with ``site`` ``None``. An answer
    found at a managed name but not written by trafficflip (a plain Route53 record)
    also has ``site`` ``None``.
    """

    site: str | None
    targets: frozenset[str]
    weight: int | None = None
    ttl: int | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One line of the append-only journal."""

    at: float
    service: str
    kind: str
    message: str
    data: dict[str, object] = field(default_factory=dict)
