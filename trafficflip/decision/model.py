"""The runtime model: frozen values that flow probes -> health -> decide -> plan -> provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from trafficflip.events import ALARMS, EventKind

__all__ = ["ALARMS", "EventKind"]


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
class Expiry:
    """When an operator's maintenance ends by itself: a ``hold``, a pin (``failover``) to
    ``site`` or a ``drain`` of ``site``. ``until`` is wall-clock epoch seconds: an operator's
    "until 14:00" is a time on the wall, and it must survive a restart."""

    command: str
    site: str | None
    until: float


@dataclass(frozen=True)
class ServiceState:
    """What trafficflip has decided for one service; persisted after every change.

    ``members`` are the sites serving their full share (one site in active-passive).
    ``shares`` are the desired percentages per site, ``None`` before the first decision.
    ``applied_at`` is when the provider confirmed the current ``shares`` (and ``ttl``); a
    ramp step is held from then, never from the decision alone.
    ``ttl`` is the short TTL of a planned move while it is in effect (``None``: the
    configured one). ``windows_begun`` holds, per site, the start (wall-clock epoch
    seconds) of the last maintenance window that drained it, so a window drains once even
    when an operator ends it early.
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
    expiries: tuple[Expiry, ...] = ()
    ttl: int | None = None
    windows_begun: tuple[tuple[str, float], ...] = ()


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
