"""What the API and the status page show about a service, as pydantic models.

Built from the running engine, so health is the live one, not the stored one. Nothing here
may carry a secret: a check is described by its type and address only (no URL credentials,
query string or headers, which may hold tokens).
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from trafficflip.config.schema import Check, DnsCheck, HttpCheck, TcpCheck
from trafficflip.decision.decide import site_order
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.model import JournalEntry
from trafficflip.operations.status import phase
from trafficflip.runtime.engine import Engine

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


class ServiceView(BaseModel):
    name: str
    provider: str
    mode: str
    phase: str = Field(description="normal, failed over, ramping step k of n, held, all down...")
    held: bool
    pinned: str | None
    drained: list[str]
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


def describe_check(check: Check) -> str:
    """A check as ``type address``, never with credentials, query strings or headers."""
    if isinstance(check, HttpCheck):
        url = httpx.URL(check.url)
        port = f":{url.port}" if url.port else ""
        return f"{check.type} {url.scheme}://{url.host}{port}{url.path}"
    if isinstance(check, TcpCheck):
        return f"tcp {check.address}"
    assert isinstance(check, DnsCheck)
    return f"dns {check.name} {check.rdtype} @{check.server}"


def check_view(engine: Engine, key: str) -> CheckView:
    health: CheckHealth = engine.checks[key]
    last = health.last
    return CheckView(
        check=describe_check(engine.jobs[key].check),
        status=health.status.value,
        reason=health.reason,
        since=_wall(engine, health.since),
        latency=None if last is None else last.latency,
        at=None if last is None else _wall(engine, last.at),
    )


def journal_view(entry: JournalEntry) -> JournalView:
    return JournalView(
        at=entry.at, service=entry.service, kind=entry.kind, message=entry.message, data=entry.data
    )


def service_view(engine: Engine, name: str, now: float, journal: int) -> ServiceView:
    """The live view of one service with its last ``journal`` entries."""
    runtime = engine.services[name]
    config, state = runtime.config, engine.states[name]
    health = engine.site_health(name)
    shares = dict(state.shares or {})
    sites = [
        SiteView(
            name=site.name,
            share=shares.get(site.name, 0),
            member=site.name in state.members,
            status=health[site.name].status.value,
            since=_wall(engine, health[site.name].since),
            reason=health[site.name].reason,
            checks=[check_view(engine, k) for k in runtime.site_checks[site.name]],
        )
        for site in config.sites
    ]
    change = engine.store.last_change(name)
    return ServiceView(
        name=name,
        provider=config.provider,
        mode=config.mode,
        phase=phase(config, state, now),
        held=state.held,
        pinned=state.pinned,
        drained=list(state.drained),
        order=list(site_order(config, state)),
        members=list(state.members),
        shares=shares,
        sites=sites,
        gates=[check_view(engine, k) for k in runtime.gate_checks],
        ramp=_ramp_view(engine, name),
        lagging_instances=list(engine.provider_status[config.provider].lagging),
        last_change=None
        if change is None
        else ChangeView(
            provider=change.provider,
            ids=list(change.change_ids),
            submitted_at=change.submitted_at,
            in_sync=change.in_sync,
            confirmed_at=change.confirmed_at,
        ),
        journal=[journal_view(e) for e in engine.store.journal(name, limit=journal)]
        if journal
        else [],
    )


def _ramp_view(engine: Engine, name: str) -> RampView | None:
    config, state = engine.services[name].config, engine.states[name]
    ramp = state.ramp
    if ramp is None:
        return None
    next_at = None
    if state.applied_at is not None:
        next_at = max(ramp.since, state.applied_at) + config.failback.step_duration
    return RampView(
        to=list(ramp.to),
        step=ramp.step + 1,
        steps=list(config.failback.steps),
        since=engine.clock.to_wall(ramp.since),
        next_at=_wall(engine, next_at),
        reason=ramp.reason,
    )


def _wall(engine: Engine, moment: float | None) -> float | None:
    """A monotonic moment of the running engine as epoch seconds, for display."""
    return None if moment is None else engine.clock.to_wall(moment)
