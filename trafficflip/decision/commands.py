"""Operator commands as pure state transitions; the decision core then moves the traffic.

``COMMANDS`` is the one table of the vocabulary: the CLI subcommands, the API routes and
the engine's intake are all built from it, so a command exists everywhere or nowhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.decide import site_order
from trafficflip.decision.maintenance import EXPIRING, format_wall, requested_until, with_expiry
from trafficflip.decision.model import Event, EventKind, ServiceState
from trafficflip.errors import CommandError

__all__ = [
    "COMMANDS",
    "REASON_MAX",
    "REASON_PATTERN",
    "CommandError",
    "CommandResult",
    "CommandSpec",
    "apply_command",
    "validate_reason",
]

# A reason is journaled, logged and notified on one line: no control characters.
REASON_MAX = 500
REASON_PATTERN = r"^[^\x00-\x1f\x7f]*$"
Transition = Callable[[ServiceConfig, ServiceState, str, str], tuple[ServiceState, Event]]


@dataclass(frozen=True)
class CommandSpec:
    """One operator command: its name, what it does, and which site argument it takes.

    ``site_arg`` is the argument naming a site (``to`` for failover, ``site`` for drain and
    promote, ``None`` when the command takes none); the CLI spells ``to`` as ``--to`` and
    ``site`` as a positional argument, the API as the JSON field of that name.
    """

    name: str
    summary: str
    site_arg: str | None
    transition: Transition

    @property
    def expires(self) -> bool:
        """Whether the command takes ``for``/``until`` (maintenance that ends by itself)."""
        return self.name in EXPIRING


@dataclass(frozen=True)
class CommandResult:
    """What became of one command: taken (``ok``) or rejected with a ``detail``."""

    ok: bool
    detail: str = ""

    @classmethod
    def rejected(cls, detail: str) -> CommandResult:
        return cls(False, detail)

    def encode(self) -> str:
        """The text the state store keeps for a completed command."""
        return json.dumps({"ok": self.ok, "detail": self.detail})

    @classmethod
    def decode(cls, text: str) -> CommandResult:
        """The inverse of ``encode``; also reads results stored before it existed."""
        if text.startswith("{"):
            data = json.loads(text)
            return cls(bool(data["ok"]), str(data.get("detail", "")))
        if text == "ok":
            return cls(True)
        return cls(False, text.removeprefix("error: "))

    def __str__(self) -> str:
        return "ok" if self.ok else f"rejected: {self.detail}"


def validate_reason(reason: object) -> str:
    """The operator's reason, or ``CommandError`` when it is not one line of text."""
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise CommandError("reason must be text")
    if len(reason) > REASON_MAX:
        raise CommandError(f"reason is longer than {REASON_MAX} characters")
    if not re.fullmatch(REASON_PATTERN, reason):
        raise CommandError("reason must be one line without control characters")
    return reason


def apply_command(
    service: ServiceConfig,
    state: ServiceState,
    name: str,
    args: Mapping[str, Any],
    *,
    wall: float | None = None,
) -> tuple[ServiceState, Event]:
    """Return the state after the command and the event to journal.

    ``wall`` is the wall-clock time (epoch seconds) a ``for`` duration counts from; a
    ``hold``, ``failover`` or ``drain`` given ``for`` or ``until`` ends by itself then
    (see ``maintenance.end_expired``). Raises ``CommandError`` for an unknown command, a
    site the service does not have, a reason that is not one line of text, or an end that
    cannot be used.
    """
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    reason = validate_reason(args.get("reason"))
    site = _site(service, args, spec.site_arg) if spec.site_arg else ""
    if wall is None and args.get("for") is not None:
        raise CommandError("for: no wall-clock time to count from")
    until = requested_until(name, args, wall or 0.0)
    new_state, event = spec.transition(service, state, site, f" ({reason})" if reason else "")
    new_state = with_expiry(new_state, name, site, until)
    if until is not None:
        event = replace(event, message=f"{event.message}; ends at {format_wall(until)}")
    return new_state, event


def _site(service: ServiceConfig, args: Mapping[str, Any], key: str) -> str:
    site = args.get(key)
    if site not in service.site_names:
        known = ", ".join(service.site_names)
        raise CommandError(f"service {service.name} has no site {site!r} (sites: {known})")
    return str(site)


def _failover(
    service: ServiceConfig, state: ServiceState, site: str, why: str
) -> tuple[ServiceState, Event]:
    return (
        replace(state, pinned=site, drained=()),
        Event(EventKind.COMMAND, f"failover to {site} requested{why}", site),
    )


def _failback(
    service: ServiceConfig, state: ServiceState, site: str, why: str
) -> tuple[ServiceState, Event]:
    released = [f"pin to {state.pinned} released"] if state.pinned else []
    released += [f"drain of {site} released" for site in state.drained]
    text = "; ".join([*released, "failback approved"])
    return (
        replace(state, pinned=None, drained=(), failback_approved=True),
        Event(EventKind.COMMAND, f"{text}{why}"),
    )


def _hold(
    service: ServiceConfig, state: ServiceState, site: str, why: str
) -> tuple[ServiceState, Event]:
    return replace(state, held=True), Event(
        EventKind.COMMAND, f"hold: automatic changes frozen{why}"
    )


def _release(
    service: ServiceConfig, state: ServiceState, site: str, why: str
) -> tuple[ServiceState, Event]:
    return replace(state, held=False), Event(
        EventKind.COMMAND, f"release: automatic changes resumed{why}"
    )


def _drain(
    service: ServiceConfig, state: ServiceState, site: str, why: str
) -> tuple[ServiceState, Event]:
    drained = tuple(dict.fromkeys((*state.drained, site)))
    pinned = None if state.pinned == site else state.pinned
    return (
        replace(state, drained=drained, pinned=pinned),
        Event(EventKind.COMMAND, f"drain {site} requested{why}", site),
    )


def _promote(
    service: ServiceConfig, state: ServiceState, site: str, why: str
) -> tuple[ServiceState, Event]:
    order = (site, *(s for s in site_order(service, state) if s != site))
    return (
        replace(state, order=order, pinned=None, drained=()),
        Event(EventKind.COMMAND, f"promote {site}: order is now {', '.join(order)}{why}", site),
    )


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("failover", "pin traffic to a site (planned maintenance)", "to", _failover),
        CommandSpec("failback", "release a pin or drain and approve failback", None, _failback),
        CommandSpec("hold", "freeze automatic changes", None, _hold),
        CommandSpec("release", "resume automatic changes", None, _release),
        CommandSpec("promote", "make a site the new primary", "site", _promote),
        CommandSpec("drain", "move traffic away from a site along the steps", "site", _drain),
    )
}
