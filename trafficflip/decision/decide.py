"""The decision core: health + stored state + config + clock -> desired shares. No I/O.

Traffic is described as ``members`` (sites serving their full share) and at most one
``Ramp`` moving traffic from the members to a new set. Losing a member is immediate
(failover); gaining one (failback, an operator's move) goes along ``failback.steps``.

A planned move (a pin, a drain) on a service with ``planned.ttl`` first lowers the record's
TTL and waits out the old one from when the provider took it, so resolvers hold the short
TTL when the first step lands; the TTL is restored once nothing is moving. A failover
never waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import (
    Decision,
    Event,
    EventKind,
    Ramp,
    RampReason,
    ServiceHealth,
    ServiceState,
    SiteHealth,
    Status,
)

FULL = 100
# The events a ramp produces when it starts and when it completes, by why it moves.
RAMP_EVENTS = {
    RampReason.FAILBACK: (EventKind.FAILBACK_STARTED, EventKind.FAILBACK_COMPLETED),
    RampReason.PLANNED_MOVE: (EventKind.PLANNED_MOVE_STARTED, EventKind.PLANNED_MOVE_COMPLETED),
    RampReason.DRAIN: (EventKind.DRAIN_STARTED, EventKind.DRAIN_COMPLETED),
}


def decide(
    service: ServiceConfig,
    state: ServiceState,
    service_health: ServiceHealth,
    now: float,
    *,
    started: bool = True,
) -> Decision:
    """Return the new state for ``service``; ``state.shares`` are the desired shares.

    ``now`` is monotonic seconds, the clock every ``since`` in health and state is on.
    ``started`` is False while any check has not completed its start-up probes: no traffic
    change is made on incomplete information. A held service is never changed.
    """
    if not started or state.held:
        return Decision(state)
    if state.failback_approved and service.failback.mode == "auto":
        state = replace(state, failback_approved=False)  # approval means nothing in auto mode
    health, gates = service_health.sites, service_health.gates
    events: list[Event] = []
    state = _drop_down_members(service, state, health, events)
    if not state.members:
        state = _recover_or_all_down(service, state, health, events)
        if not state.members:
            return Decision(state, tuple(events))
    state = _advance_ramp(service, state, health, now, events)
    if state.ramp is None:
        state = _maybe_start_ramp(service, state, health, gates, now, events)
    if state.all_down:
        state = replace(state, all_down=False)
        events.append(Event(EventKind.RECOVERED, f"serving again from {', '.join(state.members)}"))
    return Decision(_with_shares(service, state), tuple(events))


def next_step_at(
    service: ServiceConfig, state: ServiceState, health: ServiceHealth
) -> float | None:
    """When time alone may change the decision: the current step's hold (and a joining
    site's stabilize) ending, or a returning site's stabilize ending. None while a step
    waits to be applied (its hold starts then) or when only health can change it."""
    stabilize = service.failback.stabilize
    if state.ramp is not None:
        if state.applied_at is None:
            return None
        hold_end = max(state.ramp.since, state.applied_at) + service.failback.step_duration
        joining = [health.sites.get(s) for s in state.ramp.to if s not in state.members]
        stable_at = [h.since + stabilize for h in joining if h is not None and h.since is not None]
        return max([hold_end, *stable_at])
    returning = [
        h.since + stabilize
        for site, h in health.sites.items()
        if site not in state.members and h.status is Status.UP and h.since is not None
    ]
    short_ttl_held = move_starts_at(service, state)
    if short_ttl_held is not None:
        # The planned move starts once the old TTL ran out and its site is stable.
        return max([short_ttl_held, *returning])
    return min(returning, default=None)


def move_starts_at(service: ServiceConfig, state: ServiceState) -> float | None:
    """While a planned move waits for the lowered TTL: when the old TTL has run out since
    the provider took the short one (monotonic), else None."""
    if state.ttl is None or state.ramp is not None or state.applied_at is None:
        return None
    return state.applied_at + (service.ttl or 0)


def fit_to_config(service: ServiceConfig, state: ServiceState) -> Decision:
    """A stored state made to meet the service's configured sites (after a rename or a
    removal): sites that no longer exist leave the members, ramp, shares, pin, drains and
    order. A service whose serving sites all vanished gets no members, so the next decision
    serves it from its healthy sites in priority order at once, with no ramp from a site
    that is gone."""
    sites = set(service.site_names)
    known = set(state.members) | set(state.drained) | set(state.shares or {})
    known |= {state.pinned} if state.pinned else set()
    known |= set(state.ramp.to) if state.ramp else set()
    known |= set(state.order or ())
    gone = sorted(known - sites)
    if not gone:
        return Decision(state)
    members = tuple(s for s in state.members if s in sites)
    ramp = state.ramp
    if ramp is not None:
        to = tuple(s for s in ramp.to if s in sites)
        ramp = replace(ramp, to=to) if to and members and set(to) != set(members) else None
    shares = {s: v for s, v in (state.shares or {}).items() if s in sites}
    fitted = replace(
        state,
        members=members,
        ramp=ramp,
        # No shares for a vanished member: the next decision writes them afresh.
        shares=shares if members and sum(shares.values()) > 0 else None,
        applied_at=None,
        pinned=state.pinned if state.pinned in sites else None,
        drained=tuple(s for s in state.drained if s in sites),
        order=tuple(s for s in state.order if s in sites) if state.order else None,
    )
    events = [
        Event(
            EventKind.SITE_REMOVED, f"{site} is no longer configured: dropped from the state", site
        )
        for site in gone
    ]
    return Decision(fitted, tuple(events))


def site_order(service: ServiceConfig, state: ServiceState) -> tuple[str, ...]:
    """Priority order: the stored one (after a promote) or the configured one."""
    configured = service.site_names
    if state.order and set(state.order) == set(configured):
        return state.order
    return configured


def _is(health: Mapping[str, SiteHealth], site: str, status: Status) -> bool:
    entry = health.get(site)
    return entry is not None and entry.status is status


def _drop_down_members(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth],
    events: list[Event],
) -> ServiceState:
    down = [s for s in state.members if _is(health, s, Status.DOWN)]
    if not down:
        return state
    alive = tuple(s for s in state.members if s not in down)
    ramp = state.ramp
    if ramp is not None:
        # The ramp's destination loses the dead site too; if only it was new, keep going.
        to = tuple(s for s in ramp.to if s not in down)
        ramp = replace(ramp, to=to) if to and set(to) != set(alive) else None
    replacement = alive or _failover_target(service, state, health)
    kind = EventKind.SITE_OUT if alive else EventKind.FAILOVER
    target = ", ".join(replacement) if replacement else _all_down_target(service)
    for site in down:
        reason = health[site].reason
        events.append(Event(kind, f"{site} down ({reason}) -> {target}", site))
    if not alive and replacement:
        ramp = None
    return replace(state, members=replacement, ramp=ramp, failback_approved=False)


def _all_down_target(service: ServiceConfig) -> str:
    """What a failover with no site left up leads to, as its event says."""
    if service.all_down == "all":
        return "every site (all_down=all)"
    return "no site up; the last answers stay (all_down=keep)"


def _failover_target(
    service: ServiceConfig, state: ServiceState, health: Mapping[str, SiteHealth]
) -> tuple[str, ...]:
    """Where traffic goes at once when every member is down: the best site that is up."""
    up = [s for s in site_order(service, state) if _is(health, s, Status.UP)]
    if not up:
        return ()
    if state.pinned in up:
        return (state.pinned,)
    # Sites under maintenance are used only when nothing else is up.
    preferred = [s for s in up if s not in state.drained] or up
    if service.mode == "active-passive":
        return (preferred[0],)
    return tuple(preferred)


def _recover_or_all_down(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth],
    events: list[Event],
) -> ServiceState:
    """No member left: serve whatever is up now (no ramp: there is nothing to ramp from)."""
    target = _failover_target(service, state, health)
    if target:
        if state.shares is None:
            events.append(Event(EventKind.INITIAL, f"serving from {', '.join(target)}"))
        return replace(state, members=target, ramp=None)
    if not state.all_down:
        policy = service.all_down
        events.append(Event(EventKind.ALL_DOWN, f"every site is down; all_down={policy}"))
    state = replace(state, all_down=True, ramp=None)
    if service.all_down == "all":
        # Every site in the answer beats an empty one; members stay empty so the first
        # site to come back takes the traffic at once.
        return _set_shares(state, _normalize({s.name: s.weight for s in service.sites}))
    return state  # keep: the last desired shares stand; never an empty answer


def _step_held(service: ServiceConfig, state: ServiceState, ramp: Ramp, now: float) -> bool:
    if state.applied_at is None:
        return False
    return now - max(ramp.since, state.applied_at) >= service.failback.step_duration


def _stable(service: ServiceConfig, health: SiteHealth, now: float) -> bool:
    """Up for at least ``stabilize``: a site that just came back does not take traffic."""
    if health.status is not Status.UP or health.since is None:
        return False
    return now - health.since >= service.failback.stabilize


def _advance_ramp(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth],
    now: float,
    events: list[Event],
) -> ServiceState:
    ramp = state.ramp
    if ramp is None:
        return state
    joining = [s for s in ramp.to if s not in state.members]
    failed = [s for s in joining if not _is(health, s, Status.UP)]
    if failed:
        reason = "; ".join(f"{s} {health[s].status} ({health[s].reason})" for s in failed)
        events.append(Event(EventKind.FAILBACK_ABORTED, f"{reason} -> {', '.join(state.members)}"))
        return replace(state, ramp=None, failback_approved=False)
    desired = _desired_members(service, state, health)
    if not set(ramp.to) <= set(desired) or ramp.reason != _ramp_reason(state):
        events.append(Event(EventKind.RAMP_CANCELLED, f"target changed from {', '.join(ramp.to)}"))
        return replace(state, ramp=None)
    if not _step_held(service, state, ramp, now):
        return state
    # Re-checked at every step, so a ramp resumed after a restart waits out stabilize again.
    if not all(_stable(service, health[s], now) for s in joining):
        return state
    steps = service.failback.steps
    step = ramp.step + 1
    if steps[step] >= FULL:
        completed = RAMP_EVENTS[ramp.reason][1]
        events.append(Event(completed, f"{', '.join(ramp.to)} at {FULL}%"))
        return replace(state, members=ramp.to, ramp=None, failback_approved=False)
    events.append(Event(EventKind.RAMP_STEP, f"step {step + 1}/{len(steps)}: {steps[step]}%"))
    return replace(state, ramp=replace(ramp, step=step, since=now))


def _desired_members(
    service: ServiceConfig, state: ServiceState, health: Mapping[str, SiteHealth]
) -> tuple[str, ...]:
    """Where traffic belongs when everything it needs is up, ignoring stabilize."""
    if state.pinned is not None:
        return (state.pinned,) if _is(health, state.pinned, Status.UP) else state.members
    # A member whose status is not known yet (a new check, a restart) keeps its place: only
    # a site seen down loses it.
    up = [
        s
        for s in site_order(service, state)
        if s not in state.drained
        and (_is(health, s, Status.UP) or (s in state.members and not _is(health, s, Status.DOWN)))
    ]
    if not up:
        return state.members
    return (up[0],) if service.mode == "active-passive" else tuple(up)


def _ramp_reason(state: ServiceState) -> RampReason:
    """A pin is a planned move and a drain a drain: neither waits for the failback gates
    or approval. Anything else moving traffic back is a failback."""
    if state.pinned is not None:
        return RampReason.PLANNED_MOVE
    if any(s in state.drained for s in state.members):
        return RampReason.DRAIN
    return RampReason.FAILBACK


def _ready_to_join(
    service: ServiceConfig,
    state: ServiceState,
    health: SiteHealth,
    gates: Status,
    now: float,
    reason: RampReason,
) -> bool:
    if not _stable(service, health, now):
        return False  # an operator's move waits for stabilize too: never onto a flapping site
    if reason is not RampReason.FAILBACK:
        return True
    if service.failback.mode == "manual" and not state.failback_approved:
        return False
    return gates is Status.UP


def _maybe_start_ramp(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth],
    gates: Status,
    now: float,
    events: list[Event],
) -> ServiceState:
    target = _desired_members(service, state, health)
    if set(target) == set(state.members):
        return _restore_ttl(service, state, events)
    reason = _ramp_reason(state)
    if reason is not RampReason.FAILBACK and service.planned is not None:
        waiting = _lower_ttl_first(service, state, target, now, events)
        if waiting is not None:
            return waiting
    joining = [s for s in target if s not in state.members]
    ready = {s for s in joining if _ready_to_join(service, state, health[s], gates, now, reason)}
    if service.mode == "active-passive" and not ready:
        return state
    # Active-active: the stable members stay; only the ready sites join.
    target = tuple(s for s in target if s in state.members or s in ready)
    if set(target) == set(state.members):
        return state
    steps = service.failback.steps
    started, completed = RAMP_EVENTS[reason]
    start = _first_step_above(service, state, target)
    if steps[start] >= FULL:
        events.append(Event(completed, f"{', '.join(target)} at {FULL}%"))
        return replace(state, members=target, ramp=None, failback_approved=False)
    events.append(
        Event(
            started,
            f"{', '.join(state.members)} -> {', '.join(target)}: "
            f"step {start + 1}/{len(steps)}: {steps[start]}%",
        )
    )
    return replace(state, ramp=Ramp(to=target, step=start, since=now, reason=reason))


def _lower_ttl_first(
    service: ServiceConfig,
    state: ServiceState,
    target: tuple[str, ...],
    now: float,
    events: list[Event],
) -> ServiceState | None:
    """The state while a planned move waits for its short TTL, or None once it may start.

    The old TTL is waited out from when the provider took the short one (``applied_at``),
    so no resolver still holds an answer with the long TTL when the first step lands."""
    assert service.planned is not None
    short, old = service.planned.ttl, service.ttl or 0
    if state.ttl != short:
        events.append(
            Event(
                EventKind.TTL_LOWERING,
                f"planned move to {', '.join(target)}: lowering the TTL {old}s -> {short}s "
                f"first; the move starts {old}s after that is applied",
            )
        )
        return replace(state, ttl=short, applied_at=None)
    if state.applied_at is None or now - state.applied_at < old:
        return state
    return None


def _restore_ttl(service: ServiceConfig, state: ServiceState, events: list[Event]) -> ServiceState:
    """Nothing is moving: a TTL lowered for a planned move goes back to the configured one."""
    if state.ttl is None:
        return state
    events.append(Event(EventKind.TTL_RESTORED, f"TTL back to {service.ttl}s: nothing is moving"))
    return replace(state, ttl=None, applied_at=None)


def _first_step_above(service: ServiceConfig, state: ServiceState, target: tuple[str, ...]) -> int:
    """A pin to a site already serving some share starts at the first step above it."""
    current = (state.shares or {}).get(target[0], 0) if len(target) == 1 else 0
    steps = service.failback.steps
    return next((i for i, s in enumerate(steps) if s > current), len(steps) - 1)


def _distribution(service: ServiceConfig, members: tuple[str, ...]) -> dict[str, float]:
    if service.mode == "active-passive" or len(members) == 1:
        return {members[0]: 1.0}
    total = sum(service.site(s).weight for s in members)
    return {s: service.site(s).weight / total for s in members}


def _with_shares(service: ServiceConfig, state: ServiceState) -> ServiceState:
    source = _distribution(service, state.members)
    if state.ramp is None:
        mix = source
    else:
        fraction = service.failback.steps[state.ramp.step] / FULL
        dest = _distribution(service, state.ramp.to)
        mix = {
            s: (1 - fraction) * source.get(s, 0.0) + fraction * dest.get(s, 0.0)
            for s in set(source) | set(dest)
        }
    return _set_shares(state, _normalize({s: mix.get(s, 0.0) for s in service.site_names}))


def _set_shares(state: ServiceState, shares: dict[str, int]) -> ServiceState:
    """The one way a decision changes shares: new shares are not applied yet, so the sync
    writes them and the next step's hold starts when the provider took them."""
    if shares == state.shares:
        return state
    return replace(state, shares=shares, applied_at=None)


def _normalize(weights: Mapping[str, float]) -> dict[str, int]:
    """Integer percentages summing to 100 (largest remainder), every site listed."""
    total = sum(weights.values())
    exact = {s: FULL * w / total for s, w in weights.items()}
    shares = {s: int(v) for s, v in exact.items()}
    leftover = FULL - sum(shares.values())
    by_remainder = sorted(exact, key=lambda s: (shares[s] - exact[s], list(exact).index(s)))
    for site in by_remainder[:leftover]:
        shares[site] += 1
    return shares
