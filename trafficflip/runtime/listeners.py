"""Observers of the running service (metrics, notifications), called without it knowing why."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from trafficflip.decision.model import JournalEntry, ProbeResult

log = logging.getLogger("trafficflip")


class EngineListener:
    """Observes the engine without the engine knowing what for (metrics, notifications).

    Every hook runs on the event loop in the middle of a decision: it must return at once
    (queue slow work) and must not raise; an exception is logged and ignored.
    """

    def probed(self, key: str, result: ProbeResult) -> None:
        """A probe of check ``key`` finished (before it is folded into health)."""

    def journaled(self, entries: Sequence[JournalEntry]) -> None:
        """``entries`` were written to the journal."""

    def provider_synced(
        self, provider: str, error: Exception | None, apply_seconds: float | None
    ) -> None:
        """A read-plan-apply of ``provider`` ended; ``apply_seconds`` is None when nothing
        was applied (an empty plan, or a failure before the apply)."""

    def followed(self, entries: Sequence[JournalEntry]) -> None:
        """``entries`` were journaled by the cluster's leader, not here: to show, never to
        act on (a follower that notified them would repeat the leader's notices)."""

    def took_over(self) -> None:
        """This instance became the cluster's leader and took every service's state from
        the shared store: what it keeps of the history must be read again from there."""


class Listeners(list[EngineListener]):
    """The registered listeners; each hook is called on all of them, failures contained."""

    def probed(self, key: str, result: ProbeResult) -> None:
        for listener in self:
            _guard(listener.probed, key, result)

    def journaled(self, entries: Sequence[JournalEntry]) -> None:
        for listener in self:
            _guard(listener.journaled, entries)

    def provider_synced(
        self, provider: str, error: Exception | None, apply_seconds: float | None
    ) -> None:
        for listener in self:
            _guard(listener.provider_synced, provider, error, apply_seconds)

    def followed(self, entries: Sequence[JournalEntry]) -> None:
        for listener in self:
            _guard(listener.followed, entries)

    def took_over(self) -> None:
        for listener in self:
            _guard(listener.took_over)


def _guard(hook: Callable[..., None], *args: object) -> None:
    try:
        hook(*args)
    except Exception:  # an observer must never stop a traffic change
        log.exception("listener_error hook=%s", getattr(hook, "__qualname__", hook))
