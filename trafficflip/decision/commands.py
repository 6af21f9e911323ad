"""Operator commands as pure state transitions; the decision core then moves the traffic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.decide import site_order
from trafficflip.decision.model import Event, EventKind, ServiceState

COMMANDS = ("failover", "failback", "hold", "release", "promote", "drain")


class CommandError(ValueError):
    """The command cannot apply to this service (an unknown site, a missing argument)."""


def apply_command(
    service: ServiceConfig, state: ServiceState, name: str, args: Mapping[str, Any]
) -> tuple[ServiceState, Event]:
    """Return the state after the command and the event to journal."""
    reason = f" ({args['reason']})" if args.get("reason") else ""
    if name == "failover":
        site = _site(service, args, "to")
        return (
            replace(state, pinned=site, drained=()),
            Event(EventKind.COMMAND, f"failover to {site} requested{reason}", site),
        )
    if name == "failback":
        return (
            replace(state, pinned=None, drained=(), failback_approved=True),
            Event(EventKind.COMMAND, f"failback approved{reason}"),
        )
    if name == "hold":
        return replace(state, held=True), Event(
            EventKind.COMMAND, f"hold: automatic changes frozen{reason}"
        )
    if name == "release":
        return replace(state, held=False), Event(
            EventKind.COMMAND, f"release: automatic changes resumed{reason}"
        )
    if name == "drain":
        site = _site(service, args, "site")
        drained = tuple(dict.fromkeys((*state.drained, site)))
        pinned = None if state.pinned == site else state.pinned
        return (
            replace(state, drained=drained, pinned=pinned),
            Event(EventKind.COMMAND, f"drain {site} requested{reason}", site),
        )
    if name == "promote":
        site = _site(service, args, "site")
        order = (site, *(s for s in site_order(service, state) if s != site))
        return (
            replace(state, order=order, pinned=None, drained=()),
            Event(
                EventKind.COMMAND, f"promote {site}: order is now {', '.join(order)}{reason}", site
            ),
        )
    raise CommandError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")


def _site(service: ServiceConfig, args: Mapping[str, Any], key: str) -> str:
    site = args.get(key)
    if site not in service.site_names:
        known = ", ".join(service.site_names)
        raise CommandError(f"service {service.name} has no site {site!r} (sites: {known})")
    return str(site)
