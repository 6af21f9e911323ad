"""What trafficflip believes about each service, for ``status``, the demo and the API."""

from __future__ import annotations

from typing import Any

from trafficflip.config.durations import format_duration
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.decide import site_order
from trafficflip.decision.model import ServiceState
from trafficflip.runtime.state import StateStore


def phase(service: ServiceConfig, state: ServiceState, now: float) -> str:
    """normal, failed over, ramping step k of n (next in ...), held, all down, pinned ..."""
    if state.held:
        return "held"
    if state.shares is None:
        return "starting"
    if state.all_down:
        return "all down"
    if state.ramp is not None:
        steps = service.failback.steps
        text = f"ramping step {state.ramp.step + 1} of {len(steps)}"
        if state.applied_at is None:
            return text + " (applying)"
        due = max(state.ramp.since, state.applied_at) + service.failback.step_duration
        return text + f" (next in {format_duration(max(0.0, due - now))})"
    if state.pinned is not None:
        return f"pinned to {state.pinned}"
    if state.drained:
        return f"draining {', '.join(state.drained)}"
    order = site_order(service, state)
    normal = order[:1] if service.mode == "active-passive" else order
    if set(state.members) != set(normal):
        return "failed over"
    return "normal"


def service_status(
    service: ServiceConfig, state: ServiceState, store: StateStore, now: float
) -> dict[str, Any]:
    """One service as plain data (``status --json``)."""
    change = store.last_change(service.name)
    return {
        "name": service.name,
        "phase": phase(service, state, now),
        "members": list(state.members),
        "shares": dict(state.shares or {}),
        "ramp": None
        if state.ramp is None
        else {
            "to": list(state.ramp.to),
            "step": state.ramp.step + 1,
            "steps": service.failback.steps,
            "since": state.ramp.since,
        },
        "pinned": state.pinned,
        "drained": list(state.drained),
        "held": state.held,
        "order": list(site_order(service, state)),
        "failback_mode": service.failback.mode,
        "failback_approved": state.failback_approved,
        "last_change": None
        if change is None
        else {
            "provider": change.provider,
            "ids": list(change.change_ids),
            "submitted_at": change.submitted_at,
            "in_sync": change.in_sync,
        },
    }


def table(rows: list[dict[str, Any]], now: float) -> str:
    """A fixed-width table: service, phase, shares per site, last change."""
    lines = [f"{'SERVICE':<16} {'PHASE':<34} {'SHARES':<32} CHANGE"]
    for row in rows:
        shares = " ".join(f"{site}={share}%" for site, share in row["shares"].items()) or "-"
        change = row["last_change"]
        if change is None:
            sync = "-"
        elif change["in_sync"]:
            sync = "in sync"
        else:
            sync = f"lagging {format_duration(max(0.0, now - change['submitted_at']))}"
        lines.append(f"{row['name']:<16} {row['phase']:<34} {shares:<32} {sync}")
    return "\n".join(lines)
