"""Maintenance that ends by itself: the expiry of a hold, a pin or a drain, and the
configured windows that drain a site for a while. Pure; no I/O.

Expiries are wall-clock epoch seconds (an operator's "until 14:00" names a time on the wall,
and it must mean the same after a restart). The engine passes the wall time in; everything
else in the decision core stays on the monotonic clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from trafficflip.config.durations import format_duration, parse_duration
from trafficflip.config.schema import MaintenanceWindow, ServiceConfig
from trafficflip.decision.model import Decision, Event, EventKind, Expiry, ServiceState
from trafficflip.errors import CommandError

# The commands whose effect may be given an end (``for`` or ``until``).
EXPIRING = frozenset({"hold", "failover", "drain"})
# Scheduled maintenance further ahead than this is a typo (or epoch milliseconds).
MAX_AHEAD = 366 * 86400.0


def requested_until(name: str, args: Mapping[str, object], wall: float) -> float | None:
    """The wall-clock end the operator asked for with ``for`` (a duration) or ``until``
    (epoch seconds, or an ISO 8601 time with its offset); None for no end.

    Raises ``CommandError`` for both at once, either on a command that cannot expire, an
    unreadable value, or an end that is not in the future."""
    duration, until = args.get("for"), args.get("until")
    if duration is None and until is None:
        return None
    if name not in EXPIRING:
        raise CommandError(f"{name} takes no for/until (only {', '.join(sorted(EXPIRING))})")
    if duration is not None and until is not None:
        raise CommandError("give for or until, not both")
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise CommandError(f"for: {exc}") from None
        if not 0 < seconds <= MAX_AHEAD:
            most = format_duration(MAX_AHEAD)
            raise CommandError(f"for: must be longer than 0s and at most {most}")
        return wall + seconds
    end = _epoch(until)
    if not math.isfinite(end) or end <= wall:
        raise CommandError(f"until: {until!r} is not in the future")
    if end - wall > MAX_AHEAD:
        raise CommandError(f"until: {until!r} is more than {format_duration(MAX_AHEAD)} ahead")
    return end


def _epoch(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.timestamp()
    raise CommandError(
        f"until: {value!r} is not epoch seconds or an ISO 8601 time with an offset "
        "(2026-11-27T14:00:00+00:00)"
    )


def format_wall(epoch: float) -> str:
    """An expiry as people and the journal read it (UTC, to the second)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def with_expiry(state: ServiceState, name: str, site: str, until: float | None) -> ServiceState:
    """The state after command ``name`` with its expiry: expiries of maintenance that has
    ended (released, failed back, replaced) are dropped, and the same command again
    without an end makes it permanent."""
    key = (name, site or None)
    kept = tuple(e for e in state.expiries if _in_effect(state, e) and (e.command, e.site) != key)
    if until is not None:
        kept = (*kept, Expiry(name, site or None, until))
    return replace(state, expiries=kept)


def _in_effect(state: ServiceState, expiry: Expiry) -> bool:
    if expiry.command == "hold":
        return state.held
    if expiry.command == "failover":
        return state.pinned == expiry.site
    return expiry.site in state.drained


def end_expired(state: ServiceState, wall: float) -> Decision:
    """End the maintenance whose time has come. A hold is released; a pin or a drain is
    released as ``failback`` does (with approval), so traffic returns through the normal
    failback gates and ramp. One ``MAINTENANCE_ENDED`` event for each."""
    due = [e for e in state.expiries if e.until <= wall]
    if not due:
        return Decision(state)
    events = []
    for expiry in due:
        if _in_effect(state, expiry):
            state = _end(state, expiry)
            what = expiry.command + (f" {expiry.site}" if expiry.site else "")
            message = f"{what} ended as scheduled at {format_wall(expiry.until)}"
            events.append(Event(EventKind.MAINTENANCE_ENDED, message, expiry.site))
    remaining = tuple(e for e in state.expiries if e not in due)
    return Decision(replace(state, expiries=remaining), tuple(events))


def _end(state: ServiceState, expiry: Expiry) -> ServiceState:
    if expiry.command == "hold":
        return replace(state, held=False)
    if expiry.command == "failover":
        return replace(state, pinned=None, failback_approved=True)
    drained = tuple(s for s in state.drained if s != expiry.site)
    return replace(state, drained=drained, failback_approved=True)


def next_expiry(state: ServiceState) -> float | None:
    """When the next maintenance ends (wall-clock epoch seconds), or None."""
    return min((e.until for e in state.expiries), default=None)


# -- configured windows -------------------------------------------------------------------


def open_window(window: MaintenanceWindow, wall: float) -> tuple[float, float] | None:
    """The occurrence of ``window`` open at ``wall``: (start, end) in epoch seconds."""
    start = window.start_after(wall - window.duration)
    if start is None or start > wall:
        return None
    return start, start + window.duration


def next_window(window: MaintenanceWindow, wall: float) -> tuple[float, float] | None:
    """The occurrence open at ``wall``, else the next one; None when none is to come."""
    current = open_window(window, wall)
    if current is not None:
        return current
    start = window.start_after(wall)
    return None if start is None else (start, start + window.duration)


def begin_windows(service: ServiceConfig, state: ServiceState, wall: float) -> Decision:
    """Drain each site whose maintenance window is open at ``wall``, once per occurrence,
    until the window's end; the drain then ends as ``end_expired`` ends any other, through
    the failback gates and ramp. A drain the operator made without an end is left alone,
    and an operator who releases the drain early is not overruled until the next window."""
    begun = dict(state.windows_begun)
    events = []
    for window in service.maintenance:
        occurrence = open_window(window, wall)
        if occurrence is None or begun.get(window.site, -math.inf) >= occurrence[0]:
            continue
        start, end = occurrence
        site = window.site
        begun[site] = start
        current = next((e for e in state.expiries if (e.command, e.site) == ("drain", site)), None)
        if site in state.drained and (current is None or current.until >= end):
            continue  # already drained for at least as long: the operator's word stands
        drained = tuple(dict.fromkeys((*state.drained, site)))
        pinned = None if state.pinned == site else state.pinned
        state = with_expiry(replace(state, drained=drained, pinned=pinned), "drain", site, end)
        message = f"maintenance window drains {site} until {format_wall(end)}"
        events.append(Event(EventKind.MAINTENANCE_STARTED, message, site))
    if begun == dict(state.windows_begun):
        return Decision(state, tuple(events))
    return Decision(replace(state, windows_begun=tuple(sorted(begun.items()))), tuple(events))
