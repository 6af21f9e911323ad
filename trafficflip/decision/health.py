"""Rise/fall counters: one probe result never changes a check's status (unless rise/fall is 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from trafficflip.decision.model import ProbeResult, SiteHealth, Status


@dataclass(frozen=True)
class CheckHealth:
    """A check's status with its current streak of agreeing results."""

    status: Status = Status.UNKNOWN
    since: float | None = None
    streak_ok: bool = True
    streak: int = 0
    probes: int = 0
    last: ProbeResult | None = None

    @property
    def reason(self) -> str:
        """``status 503 x3``: the last result's reason and how many times in a row."""
        if self.last is None:
            return "no probe yet"
        return f"{self.last.reason} x{self.streak}" if self.streak > 1 else self.last.reason

    def settled(self, rise: int) -> bool:
        """True once start-up is over for this check: its status is known or it had
        ``rise`` probes (a check that could not prove itself up in ``rise`` probes is
        not waited for any longer, but stays UNKNOWN until ``fall`` failures)."""
        return self.status is not Status.UNKNOWN or self.probes >= rise


def observe(health: CheckHealth, result: ProbeResult, *, rise: int, fall: int) -> CheckHealth:
    """Fold one probe result into the check's health (pure)."""
    if result.inconclusive:
        return replace(health, last=result)
    streak = health.streak + 1 if result.ok == health.streak_ok and health.probes else 1
    updated = replace(
        health, streak_ok=result.ok, streak=streak, probes=health.probes + 1, last=result
    )
    if result.ok and streak >= rise and health.status is not Status.UP:
        return replace(updated, status=Status.UP, since=result.at)
    if not result.ok and streak >= fall and health.status is not Status.DOWN:
        return replace(updated, status=Status.DOWN, since=result.at)
    return updated


def site_health(
    checks: Sequence[CheckHealth],
    require: Literal["all", "any"] = "all",
    labels: Sequence[str] | None = None,
) -> SiteHealth:
    """Combine a site's checks: ``all`` needs every check up, ``any`` needs one.

    With ``labels`` (one per check) the reason names the failing checks:
    ``http http://10.0.0.1/healthz status 503 x3``.
    """
    ups = [c for c in checks if c.status is Status.UP]
    downs = [c for c in checks if c.status is Status.DOWN]
    named = zip(labels, checks, strict=True) if labels is not None else (("", c) for c in checks)
    reason = ", ".join(
        f"{label} {c.reason}" if label else c.reason
        for label, c in named
        if c.status is Status.DOWN
    )
    if require == "all":
        if downs:
            return SiteHealth(Status.DOWN, max(_since(downs)), reason)
        if len(ups) == len(checks):
            return SiteHealth(Status.UP, max(_since(ups), default=None))
    else:
        if ups:
            return SiteHealth(Status.UP, min(_since(ups)))
        if len(downs) == len(checks):
            return SiteHealth(Status.DOWN, max(_since(downs), default=None), reason)
    return SiteHealth(Status.UNKNOWN, None, reason or "waiting for probes")


def _since(checks: Sequence[CheckHealth]) -> list[float]:
    return [c.since for c in checks if c.since is not None]
