"""Health bookkeeping: which probe jobs exist, each check's rise/fall state, each site's health.

Identical checks of several services (same check, same health settings) are one probe job.
Pure bookkeeping: no I/O, no scheduling; the engine feeds it results and asks it questions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from trafficflip.config.schema import Check, HealthConfig, ServiceConfig
from trafficflip.decision.health import CheckHealth, observe, site_health
from trafficflip.decision.model import ProbeResult, SiteHealth

# The pseudo-site under which a service's failback gates are kept.
GATES = "__gates__"


@dataclass(frozen=True)
class ProbeJob:
    """One check to probe; identical checks of several services are probed once."""

    key: str
    check: Check
    health: HealthConfig


@dataclass
class ServiceRuntime:
    """Per-service wiring: which probe keys make up each site and the gates."""

    config: ServiceConfig
    site_checks: dict[str, list[str]] = field(default_factory=dict)


def check_key(check: Check, health: HealthConfig) -> str:
    return json.dumps(
        [check.model_dump(mode="json"), health.model_dump(mode="json")], sort_keys=True
    )


class HealthMonitor:
    """Probe jobs, check health and the services each check belongs to."""

    def __init__(self, services: Iterable[ServiceConfig]) -> None:
        self.jobs: dict[str, ProbeJob] = {}
        self.checks: dict[str, CheckHealth] = {}
        self.subscribers: dict[str, set[str]] = defaultdict(set)
        self.services: dict[str, ServiceRuntime] = {}
        for service in services:
            self._wire(service)

    def _wire(self, service: ServiceConfig) -> None:
        runtime = ServiceRuntime(service)
        groups = {site.name: site.checks for site in service.sites}
        groups[GATES] = service.failback.gates
        for group, checks in groups.items():
            keys = []
            for check in checks:
                key = check_key(check, service.health)
                self.jobs.setdefault(key, ProbeJob(key, check, service.health))
                self.checks.setdefault(key, CheckHealth())
                self.subscribers[key].add(service.name)
                keys.append(key)
            runtime.site_checks[group] = keys
        self.services[service.name] = runtime

    def observe(self, key: str, result: ProbeResult) -> set[str]:
        """Fold a probe result in; return the services whose health may have changed."""
        health = self.jobs[key].health
        before = self.checks[key]
        after = observe(before, result, rise=health.rise, fall=health.fall)
        self.checks[key] = after
        changed = after.status is not before.status
        if changed or after.settled(health.rise) != before.settled(health.rise):
            return set(self.subscribers[key])
        return set()

    def site_health(self, service: str) -> dict[str, SiteHealth]:
        """Each site's health, and the gates' under ``GATES`` (gates always need all)."""
        runtime = self.services[service]
        require = runtime.config.health.require
        return {
            group: site_health([self.checks[k] for k in keys], "all" if group == GATES else require)
            for group, keys in runtime.site_checks.items()
        }

    def started(self, service: str) -> bool:
        """True once every check of the service finished its start-up probes."""
        runtime = self.services[service]
        rise = runtime.config.health.rise
        return all(
            self.checks[k].settled(rise) for keys in runtime.site_checks.values() for k in keys
        )
