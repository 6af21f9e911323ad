"""What phase a service is in, the fleet summary, and the CLI table; pure, from views.

The ``ServiceView`` is the one shape of a service's status: the API sends it as JSON, the
page draws it, and ``table`` prints it whether it came from the running instance's API or
from the local state store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from trafficflip.config.durations import format_duration
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.decide import move_starts_at, next_step_at, site_order
from trafficflip.decision.model import ServiceHealth, ServiceState, SiteHealth, Status

# The phases the summary always counts, in the order an operator reads them.
SUMMARY_PHASES = ("normal", "failed over", "ramping", "held", "all down", "provider error")
# Phases not normal and listed first, worst first; anything else sorts after them.
SEVERITY = (
    "all down",
    "provider error",
    "failed over",
    "held",
    "ramping",
    "lowering TTL",
    "pinned",
    "draining",
    "starting",
    "never run",
)


@dataclass(frozen=True)
class Phase:
    """A service's phase (one of ``SEVERITY`` or ``normal``) and what it is waiting for."""

    name: str
    detail: str = ""


def clock_text(at: float) -> str:
    """Epoch seconds as local ``HH:MM:SS``, as an operator reads them next to ``date``."""
    return time.strftime("%H:%M:%S", time.localtime(at))


def phase(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth] | None,
    gates: SiteHealth | None,
    *,
    provider_error: str | None = None,
    at_text: Callable[[float], str] = clock_text,
) -> Phase:
    """The phase, most urgent first. ``health`` is None when only the stored state is known
    (``status`` without a running instance); ``at_text`` formats a time on the health
    clock for people. Maintenance that ends by itself says when (wall clock)."""
    found = _phase(service, state, health, gates, provider_error=provider_error, at_text=at_text)
    if not state.expiries:
        return found
    ends = "; ".join(
        f"{e.command}{' ' + e.site if e.site else ''} ends at {clock_text(e.until)}"
        for e in sorted(state.expiries, key=lambda e: e.until)
    )
    return Phase(found.name, f"{found.detail}; {ends}" if found.detail else ends)


def _phase(
    service: ServiceConfig,
    state: ServiceState,
    health: Mapping[str, SiteHealth] | None,
    gates: SiteHealth | None,
    *,
    provider_error: str | None,
    at_text: Callable[[float], str],
) -> Phase:
    if state.all_down:
        return Phase("all down", "every site is down; answers kept as they were")
    if provider_error is not None:
        return Phase("provider error", provider_error)
    if state.held:
        return Phase("held", "automatic changes frozen")
    if state.shares is None:
        return Phase("starting", "waiting for the first probes")
    if state.ramp is not None:
        return Phase("ramping", _ramp_detail(service, state, at_text))
    if state.ttl is not None and _move_pending(state):
        starts = move_starts_at(service, state)
        when = "once the provider has it" if starts is None else f"at {at_text(starts)}"
        return Phase("lowering TTL", f"TTL {state.ttl}s before the planned move; it starts {when}")
    if state.pinned is not None:
        return Phase("pinned", f"pinned to {state.pinned}")
    if state.drained:
        # The ramp is over once the drained sites serve nothing: say so, not "draining".
        done = all(s not in state.members for s in state.drained)
        verb = "drained" if done else "draining"
        return Phase(
            "draining",
            f"{', '.join(state.drained)} {verb}" if done else f"{verb} {', '.join(state.drained)}",
        )
    order = site_order(service, state)
    normal = order[:1] if service.mode == "active-passive" else order
    if set(state.members) != set(normal):
        away = [s for s in normal if s not in state.members]
        return Phase("failed over", _returning_detail(service, state, away, health, gates, at_text))
    return Phase("normal")


def _move_pending(state: ServiceState) -> bool:
    """A pin or a drain that has not moved the traffic yet."""
    pinned_away = state.pinned is not None and tuple(state.members) != (state.pinned,)
    return pinned_away or any(s in state.members for s in state.drained)


def _ramp_detail(
    service: ServiceConfig, state: ServiceState, at_text: Callable[[float], str]
) -> str:
    assert state.ramp is not None
    steps = service.failback.steps
    text = f"step {state.ramp.step + 1} of {len(steps)} to {', '.join(state.ramp.to)}"
    due = next_step_at(service, state, ServiceHealth({}))
    if due is None:
        return text + ", applying"
    return text + f", next at {at_text(due)}"


def _returning_detail(
    service: ServiceConfig,
    state: ServiceState,
    away: Sequence[str],
    health: Mapping[str, SiteHealth] | None,
    gates: SiteHealth | None,
    at_text: Callable[[float], str],
) -> str:
    """Why the preferred sites do not serve yet: down, stabilizing until when, waiting for
    approval, or held back by the gates."""
    if health is None:
        return ""
    parts = []
    for site in away:
        h = health.get(site, SiteHealth(Status.UNKNOWN))
        if h.status is not Status.UP:
            parts.append(f"{site} {h.status.value}" + (f": {h.reason}" if h.reason else ""))
        elif service.failback.mode == "manual" and not state.failback_approved:
            parts.append(f"{site} up, awaiting failback approval")
        elif h.since is not None:
            until = at_text(h.since + service.failback.stabilize)
            parts.append(f"{site} up, stabilizing until {until}")
    if gates is not None and service.failback.gates:
        text = f"gates {gates.status.value}"
        parts.append(
            text + (f": {gates.reason}" if gates.status is not Status.UP and gates.reason else "")
        )
    return "; ".join(parts)


def severity(phase_name: str) -> int:
    """Sort key: the worst phase first, normal last."""
    return SEVERITY.index(phase_name) if phase_name in SEVERITY else len(SEVERITY)


@dataclass(frozen=True)
class Summary:
    """Services by phase, checks down, and the last failover (epoch seconds)."""

    services: int
    phases: dict[str, int]
    checks_down: int | None  # None: not known (read from the store, no instance asked)
    last_failover: float | None

    def line(self) -> str:
        counts = ", ".join(f"{self.phases.get(p, 0)} {p}" for p in SUMMARY_PHASES)
        others = ", ".join(
            f"{n} {p}" for p, n in self.phases.items() if p not in SUMMARY_PHASES and n
        )
        down = "checks not known" if self.checks_down is None else f"{self.checks_down} checks down"
        last = "never" if self.last_failover is None else clock_text(self.last_failover)
        total = plural(self.services, "service")
        return f"{total}: {counts}{', ' + others if others else ''}; {down}; last failover {last}"


def plural(count: int, noun: str) -> str:
    """``1 service``, ``2 services``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


# Known services listed when a command names an unknown one.
KNOWN_LISTED = 20


def known_services(names: Iterable[str]) -> str:
    """`` (services: api, www)`` for a message about an unknown service; the first
    ``KNOWN_LISTED`` by name, then how many more."""
    known = sorted(names)
    if not known:
        return " (no services are configured)"
    more = f" and {len(known) - KNOWN_LISTED} more" if len(known) > KNOWN_LISTED else ""
    return f" (services: {', '.join(known[:KNOWN_LISTED])}{more})"


def waits_for(command: str, service: ServiceConfig) -> str:
    """What a taken command still waits for, said in its answer; empty when nothing. A drain
    moves traffic only once the sites taking it have been up for ``failback.stabilize``,
    then along the steps: "ok" alone reads as done."""
    if command not in ("drain", "failover"):
        return ""
    failback = service.failback
    return (
        "traffic moves once the sites taking it have been up for failback.stabilize "
        f"({format_duration(failback.stabilize)}), then in {len(failback.steps)} steps of "
        f"{format_duration(failback.step_duration)}"
    )


def summarize(
    phases: Iterable[str], checks_down: int | None, last_failover: float | None
) -> Summary:
    counts = dict.fromkeys(SUMMARY_PHASES, 0)
    total = 0
    for name in phases:
        counts[name] = counts.get(name, 0) + 1
        total += 1
    return Summary(total, counts, checks_down, last_failover)


@dataclass(frozen=True)
class Row:
    """What the table prints for one service (built from a ``ServiceView`` or its JSON)."""

    name: str
    phase: str
    shares: Sequence[tuple[str, int]]
    sync: str
    detail: str


def table(rows: Sequence[Row]) -> str:
    """Fixed-width columns sized to their content, so a long detail never shifts the others."""
    header = Row("SERVICE", "PHASE", (), "CHANGE", "DETAIL")
    cells = [(r.name, r.phase, _shares(r), r.sync, r.detail) for r in rows]
    head = (header.name, header.phase, "SHARES", header.sync, header.detail)
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]
    lines = []
    for cell in [head, *cells]:
        padded = [text.ljust(width) for text, width in zip(cell, widths, strict=False)]
        lines.append("  ".join([*padded, cell[4]]).rstrip())
    return "\n".join(lines)


def _shares(row: Row) -> str:
    return " ".join(f"{site}={share}%" for site, share in row.shares) or "-"
