"""Desired answers vs actual answers -> a ``Plan`` that prints itself and refuses unsafe change."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.errors import UnsafePlanError

Action = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Change:
    """One answer to create, update or delete for one service."""

    service: ServiceConfig
    action: Action
    before: Answer | None
    after: Answer | None

    @property
    def site(self) -> str | None:
        answer = self.after or self.before
        return answer.site if answer else None

    @property
    def target(self) -> str:
        """What changes: the DNS name and type (``api.example.com. A``), or a pool service's
        name; then the site (``(answer)`` for a set-only backend's one answer)."""
        service = self.service
        name = f"{service.record} {service.type}" if service.record else service.name
        return f"{name} {self.site or '(answer)'}"

    def __str__(self) -> str:
        if self.action == "create":
            return f"+ {self.target}: {_describe(self.after)}"
        if self.action == "delete":
            return f"- {self.target}: {_describe(self.before)}"
        return f"~ {self.target}: {_describe(self.before)} -> {_describe(self.after)}"


def _describe(answer: Answer | None) -> str:
    if answer is None:
        return "none"
    parts = [",".join(sorted(answer.targets)) or "(no targets)"]
    if answer.weight is not None:
        parts.append(f"weight {answer.weight}")
    if answer.ttl is not None:
        parts.append(f"ttl {answer.ttl}")
    return " ".join(parts)


@dataclass(frozen=True)
class Plan:
    """The changes one provider must make, sorted by service and site, with the complete
    answer set each service must hold afterwards (checked for safety before applying)."""

    changes: tuple[Change, ...] = ()
    desired: Mapping[str, tuple[Answer, ...]] = field(default_factory=dict)
    # True when the answers changed from were read from the backend for this plan, not
    # remembered: only then is a "create" known to find nothing in its way.
    read_first: bool = False

    def __bool__(self) -> bool:
        return bool(self.changes)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def summary(self) -> str:
        return (
            f"Creates={self.count('create')}, Updates={self.count('update')}, "
            f"Deletes={self.count('delete')}"
        )

    @property
    def services(self) -> tuple[ServiceConfig, ...]:
        seen: dict[str, ServiceConfig] = {}
        for change in self.changes:
            seen.setdefault(change.service.name, change.service)
        return tuple(seen.values())

    def for_service(self, name: str) -> tuple[Change, ...]:
        return self._by_service.get(name, ())

    @functools.cached_property
    def _by_service(self) -> dict[str, tuple[Change, ...]]:
        # Looked up once per service after an apply: a scan each time would be quadratic
        # (3.7 s for a mass failover of 2,000 services).
        grouped: dict[str, list[Change]] = {}
        for change in self.changes:
            grouped.setdefault(change.service.name, []).append(change)
        return {name: tuple(changes) for name, changes in grouped.items()}

    def __str__(self) -> str:
        if not self.changes:
            return "No changes"
        return "\n".join([*(str(c) for c in self.changes), self.summary])


def render(
    service: ServiceConfig, shares: Mapping[str, int], *, weighted: bool, ttl: int | None = None
) -> tuple[Answer, ...]:
    """The answers that express ``shares`` on a backend, with ``ttl`` (a planned move's
    short TTL) or else the service's.

    A weighted backend gets one answer per site with its share as the weight (0 keeps the
    answer in place but takes it out of rotation). A set-only backend gets one answer with
    the targets of every site that has a share: a ramp becomes a mixed answer.
    """
    ttl = ttl or service.ttl
    if weighted:
        return tuple(
            Answer(s.name, frozenset(s.targets), shares.get(s.name, 0), ttl) for s in service.sites
        )
    targets = frozenset(t for s in service.sites if shares.get(s.name, 0) > 0 for t in s.targets)
    return (Answer(None, targets, None, ttl),)


def check_safe(service: ServiceConfig, desired: Sequence[Answer]) -> None:
    """Refuse an answer set that would send traffic nowhere."""
    serving = [a for a in desired if a.targets and (a.weight is None or a.weight > 0)]
    if not serving:
        raise UnsafePlanError(
            f"service {service.name}: refusing a plan that leaves no target serving"
        )


def diff(
    service: ServiceConfig, desired: Iterable[Answer], actual: Iterable[Answer]
) -> tuple[Change, ...]:
    """Changes that turn ``actual`` into ``desired`` for one service.

    Answers are matched by site. An actual answer with no site at a name where trafficflip
    wants weighted answers is someone's plain record: it is deleted in the same batch that
    creates ours (a takeover). An answer for a site no longer configured is taken out of
    rotation (weight 0), never deleted: deleting what we did not just write is not ours to do.
    """
    desired_list = list(desired)
    check_safe(service, desired_list)
    have = {a.site: a for a in actual}
    changes: list[Change] = []
    for answer in desired_list:
        before = have.pop(answer.site, None)
        if before is None:
            changes.append(Change(service, "create", None, answer))
        elif before != answer:
            changes.append(Change(service, "update", before, answer))
    for site, leftover in have.items():
        if site is None:
            changes.append(Change(service, "delete", leftover, None))
        elif leftover.weight:
            retired = Answer(site, leftover.targets, 0, leftover.ttl)
            changes.append(Change(service, "update", leftover, retired))
    return tuple(changes)


def plan_services(
    items: Iterable[tuple[ServiceConfig, tuple[Answer, ...], Iterable[Answer]]],
    *,
    read_first: bool = False,
) -> Plan:
    """The plan for (service, desired answers, actual answers) triples."""
    items = list(items)
    changes = [c for service, desired, actual in items for c in diff(service, desired, actual)]
    desired = {service.name: desired for service, desired, _ in items}
    return make_plan(changes, desired, read_first=read_first)


def make_plan(
    changes: Iterable[Change],
    desired: Mapping[str, tuple[Answer, ...]] | None = None,
    *,
    read_first: bool = False,
) -> Plan:
    """Sort the changes: by service, deletes first (a takeover deletes before it creates)."""
    ordered = sorted(changes, key=lambda c: (c.service.name, c.action != "delete", c.site or ""))
    return Plan(tuple(ordered), dict(desired or {}), read_first)
