"""The journal: the one writer of events, to the log, the store and the listeners.

Every event trafficflip records goes through ``Journal.record``: one log line, one journal
entry persisted with the state it explains (one transaction, through the ``StateWriter``),
and one call to the listeners (metrics, notifications). A preview journal only collects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from trafficflip.decision.model import ALARMS, Event, EventKind, JournalEntry, ServiceState
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.listeners import Listeners
from trafficflip.runtime.writer import StateWriter

log = logging.getLogger("trafficflip")


class Journal:
    """Logs, persists and announces events; see the module docstring."""

    def __init__(self, writer: StateWriter | None, clock: Clock, listeners: Listeners) -> None:
        """``writer`` None makes a preview journal: events are kept in ``previewed`` and
        neither logged nor stored, because they did not happen."""
        self.writer = writer
        self.clock = clock
        self.listeners = listeners
        self.previewed: list[tuple[str, Event]] = []

    def record(
        self,
        service: str,
        events: Sequence[Event],
        *,
        state: ServiceState | None = None,
        data: Mapping[str, object] | None = None,
    ) -> list[JournalEntry]:
        """Record ``events`` of ``service``; with ``state``, persist it in the same write."""
        if self.writer is None:
            self.previewed.extend((service, e) for e in events)
            return []
        now = self.clock.wall()
        entries = []
        for event in events:
            level = logging.WARNING if event.kind in ALARMS else logging.INFO
            log.log(level, "%s %s: %s", event.kind, service, event.message)
            extra: dict[str, object] = {"site": event.site} if event.site else {}
            if state is not None and state.shares is not None:
                extra["shares"] = dict(state.shares)
            entries.append(
                JournalEntry(now, service, event.kind, event.message, {**extra, **(data or {})})
            )
        if state is not None:
            self.writer.save(service, stored_state(state, self.clock), entries)
        elif entries:
            self.writer.append(entries)
        if entries:
            self.listeners.journaled(entries)
        return entries

    def error(self, service: str, message: str) -> None:
        """An unexpected failure deciding or planning one service (the others go on)."""
        self.record(service, [Event(EventKind.ERROR, message)])


def stored_state(state: ServiceState, clock: Clock) -> ServiceState:
    """The state as the store keeps it: monotonic moments as wall time."""
    ramp = state.ramp
    return replace(
        state,
        applied_at=None if state.applied_at is None else clock.to_wall(state.applied_at),
        ramp=None if ramp is None else replace(ramp, since=clock.to_wall(ramp.since)),
    )


def resumed_state(state: ServiceState, clock: Clock) -> ServiceState:
    """A stored state taken up again after a start. Conservative: a step's hold starts over
    (a wall clock moved back or forward must never let a step advance early), and what was
    applied is taken as still applied (the first reconcile corrects any drift)."""
    now = clock.now()
    ramp = state.ramp
    return replace(
        state,
        applied_at=None if state.applied_at is None else now,
        ramp=None if ramp is None else replace(ramp, since=now),
    )
