"""The decision core: health + stored state + config + clock -> desired shares. No I/O.

Traffic is described as ``members`` (sites serving their full share) and at most one
``Ramp`` moving traffic from the members to a new set. Losing a member is immediate
(failover); gaining one (failback, an operator's move) goes along ``failback.steps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Decision, Event, Ramp, ServiceState, SiteHealth, Status

FULL = 100


def decide(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth],
    gates: Status,
    now: float,
    *,
    started: bool = True,
) -> Decision:
    """Return the new state for ``service``; ``state.shares`` are the desired shares.

    ``started`` is False while any check has not completed its start-up probes: no traffic
    change is made on incomplete information. A held service is never changed.
    """
    if not started or state.held:
        return Decision(state)
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
        events.append(Event("recovered", f"serving again from {', '.join(state.members)}"))
    return Decision(_with_shares(service, state), tuple(events))


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
    kind = "site_out" if alive else "failover"
    for site in down:
        reason = health[site].reason
        target = ", ".join(replacement) if replacement else "nothing"
        events.append(Event(kind, f"{site} down ({reason}) -> {target}", site))
    if not alive and replacement:
        ramp = None
    return replace(state, members=replacement, ramp=ramp, failback_approved=False)


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
            events.append(Event("initial", f"serving from {', '.join(target)}"))
        return replace(state, members=target, ramp=None)
    if not state.all_down:
        policy = service.all_down
        events.append(Event("all_down", f"every site is down; all_down={policy}"))
    state = replace(state, all_down=True, ramp=None)
    if service.all_down == "all":
        # Every site in the answer beats an empty one; members stay empty so the first
        # site to come back takes the traffic at once.
        return replace(state, shares=_normalize({s.name: s.weight for s in service.sites}))
    return state  # keep: the last desired shares stand; never an empty answer


def _step_held(service: ServiceConfig, state: ServiceState, ramp: Ramp, now: float) -> bool:
    if state.applied_at is None:
        return False
    return now - max(ramp.since, state.applied_at) >= service.failback.step_duration


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
        events.append(Event("failback_aborted", f"{reason} -> {', '.join(state.members)}"))
        return replace(state, ramp=None, failback_approved=False)
    operator = ramp.reason == "operator"
    desired = _desired_members(service, state, health)
    if not set(ramp.to) <= set(desired) or operator != _operator_move(state):
        events.append(Event("ramp_cancelled", f"target changed from {', '.join(ramp.to)}"))
        return replace(state, ramp=None)
    if not _step_held(service, state, ramp, now):
        return state
    steps = service.failback.steps
    step = ramp.step + 1
    if steps[step] >= FULL:
        events.append(Event("failback_completed", f"{', '.join(ramp.to)} at {FULL}%"))
        return replace(state, members=ramp.to, ramp=None, failback_approved=False)
    events.append(Event("ramp_step", f"step {step + 1}/{len(steps)}: {steps[step]}%"))
    return replace(state, ramp=replace(ramp, step=step, since=now))


def _desired_members(
    service: ServiceConfig, state: ServiceState, health: Mapping[str, SiteHealth]
) -> tuple[str, ...]:
    """Where traffic belongs when everything it needs is up, ignoring stabilize."""
    if state.pinned is not None:
        return (state.pinned,) if _is(health, state.pinned, Status.UP) else state.members
    up = [
        s
        for s in site_order(service, state)
        if _is(health, s, Status.UP) and s not in state.drained
    ]
    if not up:
        return state.members
    return (up[0],) if service.mode == "active-passive" else tuple(up)


def _operator_move(state: ServiceState) -> bool:
    """A pin or a drain moves traffic at once; it does not wait for stabilize."""
    return state.pinned is not None or any(s in state.drained for s in state.members)


def _ready_to_join(
    service: ServiceConfig,
    state: ServiceState,
    health: SiteHealth,
    gates: Status,
    now: float,
) -> bool:
    if service.failback.mode == "manual" and not state.failback_approved:
        return False
    if gates is not Status.UP or health.since is None:
        return False
    return now - health.since >= service.failback.stabilize


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
        return state
    if not _operator_move(state):
        joining = [s for s in target if s not in state.members]
        ready = {s for s in joining if _ready_to_join(service, state, health[s], gates, now)}
        if service.mode == "active-passive" and not ready:
            return state
        # Active-active: the stable members stay; only the ready sites join.
        target = tuple(s for s in target if s in state.members or s in ready)
        if set(target) == set(state.members):
            return state
    reason = "operator" if _operator_move(state) else "failback"
    steps = service.failback.steps
    start = _first_step_above(service, state, target)
    if steps[start] >= FULL:
        events.append(Event("failback_completed", f"{', '.join(target)} at {FULL}% ({reason})"))
        return replace(state, members=target, ramp=None, failback_approved=False)
    events.append(
        Event(
            "failback_started",
            f"{', '.join(state.members)} -> {', '.join(target)} ({reason}): "
            f"step {start + 1}/{len(steps)}: {steps[start]}%",
        )
    )
    return replace(state, ramp=Ramp(to=target, step=start, since=now, reason=reason))


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
    shares = _normalize({s: mix.get(s, 0.0) for s in service.site_names})
    if shares == state.shares:
        return state
    # New shares are not applied yet: the next step's hold starts when they are.
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
