"""What the API and the status page show about a service, as pydantic models.

Built from the running engine, so health is the live one, not the stored one. Nothing here
may carry a secret: a check is described by its type and address only (no URL credentials,
query string or headers, which may hold tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.decide import next_step_at, site_order
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.maintenance import next_window
from trafficflip.decision.model import (
    JournalEntry,
    ServiceHealth,
    ServiceState,
    SiteHealth,
    Status,
)
from trafficflip.operations.status import Phase, Row, clock_text, phase
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import ChangeRecord

HealthStatus = Literal["up", "down", "unknown"]


class CheckView(BaseModel):
    check: str = Field(description="type and address, e.g. 'http http://192.0.2.10/healthz'")
    status: HealthStatus
    reason: str = Field(description="the last result and how often in a row: 'status 503 x3'")
    since: float | None = Field(description="when the status last changed (epoch seconds)")
    latency: float | None = Field(description="the last probe's latency in seconds")
    at: float | None = Field(description="when the last probe finished (epoch seconds)")


class SiteView(BaseModel):
    name: str
    share: int = Field(description="percentage of the answers this site holds")
    member: bool = Field(description="serving its full share (not joining in a ramp)")
    status: HealthStatus
    since: float | None
    reason: str
    checks: list[CheckView]


class RampView(BaseModel):
    to: list[str]
    step: int = Field(description="1-based step of failback.steps")
    steps: list[int]
    since: float
    next_at: float | None = Field(description="when the next step is due; null while applying")
    reason: str


class ChangeView(BaseModel):
    provider: str
    ids: list[str]
    submitted_at: float
    in_sync: bool
    confirmed_at: float | None


class JournalView(BaseModel):
    at: float
    service: str
    kind: str
    message: str
    data: dict[str, Any]


class SharePoint(BaseModel):
    at: float = Field(description="when the shares became these (epoch seconds)")
    shares: dict[str, int]
    kind: str = Field(description="the journal event that set them (failover, ramp_step...)")


class MaintenanceView(BaseModel):
    """Operator maintenance that ends by itself (``hold``/``failover``/``drain`` with
    ``for`` or ``until``)."""

    command: str
    site: str | None
    until: float = Field(description="wall-clock epoch seconds when it ends")


class WindowView(BaseModel):
    """A configured maintenance window: its occurrence open now, or the next one."""

    site: str
    start: float = Field(description="wall-clock epoch seconds when the occurrence opens")
    end: float = Field(description="wall-clock epoch seconds when it closes")
    open: bool = Field(description="true while the occurrence is open (the site is drained)")
    every: str | None = Field(description="the recurrence as configured, or null for once")


class ServiceView(BaseModel):
    """One service's status: the one shape the API, the page and ``status`` render."""

    name: str
    provider: str
    mode: str
    phase: str = Field(
        description="normal, failed over, ramping, held, all down, provider error, pinned, "
        "draining, starting (or never run, from a store without a running instance)"
    )
    detail: str = Field(
        "", description="what the phase waits for: 'primary up, stabilizing until 12:04:30'"
    )
    provider_error: str | None = None
    held: bool
    pinned: str | None
    drained: list[str]
    maintenance: list[MaintenanceView] = Field(
        default=[], description="maintenance scheduled to end by itself, soonest first"
    )
    windows: list[WindowView] = Field(
        default=[], description="configured maintenance windows: open or next, soonest first"
    )
    order: list[str]
    members: list[str]
    shares: dict[str, int]
    sites: list[SiteView]
    gates: list[CheckView]
    ramp: RampView | None
    last_change: ChangeView | None
    lagging_instances: list[str] = Field(
        default=[], description="backend instances not holding the last change (HAProxy)"
    )
    journal: list[JournalView]
    timeline: list[SharePoint] = Field(
        default=[], description="share changes over the last hour, oldest first (from the journal)"
    )

    def row(self) -> Row:
        """The CLI table's row for this service."""
        return Row(
            self.name, self.phase, list(self.shares.items()), _sync(self.last_change), self.detail
        )


def _sync(change: ChangeView | None) -> str:
    if change is None:
        return "-"
    if change.in_sync:
        return "in sync"
    return f"lagging since {clock_text(change.submitted_at)}"


TIMELINE_SPAN = 3600.0
# Journal entries a view carries at most: the API's largest page, and an hour of a
# flapping service's timeline.
JOURNAL_KEEP = 50


def check_view(engine: Engine, key: str, to_wall: Callable[[float], float]) -> CheckView:
    health: CheckHealth = engine.checks[key]
    last = health.last
    return CheckView.model_construct(
        check=engine.jobs[key].label,
        status=health.status.value,
        reason=health.reason,
        since=None if health.since is None else to_wall(health.since),
        latency=None if last is None else last.latency,
        at=None if last is None else to_wall(last.at),
    )


def journal_view(entry: JournalEntry) -> JournalView:
    return JournalView.model_construct(
        at=entry.at, service=entry.service, kind=entry.kind, message=entry.message, data=entry.data
    )


def wall_clock(engine: Engine) -> Callable[[float], float]:
    """How to show the engine's times (monotonic) as epoch seconds."""
    return engine.clock.to_wall


def _same(moment: float) -> float:
    return moment


def service_view(
    engine: Engine, name: str, journal: Sequence[JournalView], change: ChangeRecord | None
) -> ServiceView:
    """The live view of one service, with ``journal`` (oldest first) as its history.

    Pure reads of the engine's current values: the snapshot calls it between other work.
    """
    runtime = engine.services[name]
    config, state = runtime.config, engine.states[name]
    to_wall = wall_clock(engine)
    service_health = engine.service_health(name)
    health = service_health.sites
    gates = _gates(engine, runtime.gate_checks, service_health.gates)
    status = engine.provider_status[config.provider]
    error = None if status.ok else f"{status.error_kind}: {status.error}"
    now_phase = phase(
        config, state, health, gates, provider_error=error, at_text=lambda t: clock_text(to_wall(t))
    )
    shares = _shares(config, state)
    sites = [
        SiteView.model_construct(
            name=site.name,
            share=shares.get(site.name, 0),
            member=site.name in state.members,
            status=health[site.name].status.value,
            since=_wall(health[site.name].since, to_wall),
            reason=health[site.name].reason,
            checks=[check_view(engine, k, to_wall) for k in runtime.site_checks[site.name]],
        )
        for site in config.sites
    ]
    view = stored_view(config, state, journal, change, now_phase, engine.clock.wall(), to_wall)
    view.sites = sites
    view.gates = [check_view(engine, k, to_wall) for k in runtime.gate_checks]
    view.lagging_instances = list(status.lagging)
    view.provider_error = error
    return view


def _gates(engine: Engine, keys: Sequence[str], status: Status) -> SiteHealth | None:
    """The gates as one health, with the first failing gate's reason."""
    if not keys:
        return None
    failing = [engine.checks[k].reason for k in keys if engine.checks[k].status is not Status.UP]
    return SiteHealth(status, reason=failing[0] if failing else "")


def stored_view(
    config: ServiceConfig,
    state: ServiceState,
    journal: Sequence[JournalView],
    change: ChangeRecord | None,
    now_phase: Phase,
    wall_now: float,
    to_wall: Callable[[float], float] = _same,
) -> ServiceView:
    """A view from what the state store holds (no live health: sites are listed without
    status). ``status`` uses it when no instance is asked; ``service_view`` adds health."""
    shares = _shares(config, state)
    return ServiceView.model_construct(
        name=config.name,
        provider=config.provider,
        mode=config.mode,
        phase=now_phase.name,
        detail=now_phase.detail,
        held=state.held,
        pinned=state.pinned,
        drained=list(state.drained),
        maintenance=[
            MaintenanceView.model_construct(command=e.command, site=e.site, until=e.until)
            for e in sorted(state.expiries, key=lambda e: e.until)
        ],
        windows=windows_view(config, wall_now),
        order=list(site_order(config, state)),
        members=list(state.members),
        shares=shares,
        sites=[],
        gates=[],
        ramp=_ramp_view(config, state, to_wall),
        last_change=None if change is None else _change_view(change),
        journal=list(journal),
        timeline=timeline(journal, wall_now),
    )


def windows_view(config: ServiceConfig, wall_now: float) -> list[WindowView]:
    """Each configured window's open or next occurrence, soonest first."""
    views = []
    for window in config.maintenance:
        occurrence = next_window(window, wall_now)
        if occurrence is not None:
            start, end = occurrence
            views.append(
                WindowView.model_construct(
                    site=window.site,
                    start=start,
                    end=end,
                    open=start <= wall_now,
                    every=window.every,
                )
            )
    return sorted(views, key=lambda w: w.start)


def _shares(config: ServiceConfig, state: ServiceState) -> dict[str, int]:
    """Shares in config order (the order the operator wrote the sites in)."""
    shares = state.shares or {}
    return {site: shares[site] for site in config.site_names if site in shares}


def _wall(moment: float | None, to_wall: Callable[[float], float]) -> float | None:
    return None if moment is None else to_wall(moment)


def _change_view(change: ChangeRecord) -> ChangeView:
    return ChangeView.model_construct(
        provider=change.provider,
        ids=list(change.change_ids),
        submitted_at=change.submitted_at,
        in_sync=change.in_sync,
        confirmed_at=change.confirmed_at,
    )


def timeline(journal: Sequence[JournalView], now: float) -> list[SharePoint]:
    """The share changes of the last ``TIMELINE_SPAN``, with the last one before it as the
    starting point, from journal entries that carry shares."""
    start = now - TIMELINE_SPAN
    with_shares = [e for e in journal if isinstance(e.data.get("shares"), dict)]
    earlier = [e for e in with_shares if e.at < start][-1:]
    return [
        SharePoint.model_construct(at=e.at, shares=e.data["shares"], kind=e.kind)
        for e in earlier + [e for e in with_shares if e.at >= start]
    ]


def _ramp_view(
    config: ServiceConfig, state: ServiceState, to_wall: Callable[[float], float]
) -> RampView | None:
    ramp = state.ramp
    if ramp is None:
        return None
    due = next_step_at(config, state, ServiceHealth({}))
    return RampView.model_construct(
        to=list(ramp.to),
        step=ramp.step + 1,
        steps=list(config.failback.steps),
        since=to_wall(ramp.since),
        next_at=None if due is None else to_wall(due),
        reason=ramp.reason,
    )
