"""Health bookkeeping: which probe jobs exist, each check's rise/fall state, each site's health.

Identical checks of several services (same check, same health settings) are one probe job.
Pure bookkeeping: no I/O, no scheduling; the engine feeds it results and asks it questions.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from trafficflip.config.schema import Check, HealthConfig, ServiceConfig
from trafficflip.decision.health import CheckHealth, observe, site_health
from trafficflip.decision.model import ProbeResult, ServiceHealth, SiteHealth, Status


def silence_limit(health: HealthConfig) -> float:
    """How long a check may go without any result before it is unknown: three intervals,
    or one probe's full interval and timeout with a second to spare if that is longer."""
    return max(3 * health.interval, health.interval + health.timeout + 1.0)


def silence_grace(health: HealthConfig) -> float:
    """How long a silent check stays unknown before it counts as down: as long as ``fall``
    failed probes would take. Unknown never moves traffic; a serving site nobody can
    probe any longer must, in the end."""
    return health.fall * health.interval


@dataclass(frozen=True)
class ProbeJob:
    """One check to probe; identical checks of several services are probed once."""

    key: str
    check: Check
    health: HealthConfig

    @functools.cached_property
    def label(self) -> str:
        """How reasons name the check (``http http://192.0.2.10/healthz``): made once,
        since every decision of every service reads it."""
        return self.check.describe()


@dataclass
class ServiceRuntime:
    """Per-service wiring: which probe keys make up each site, and the failback gates."""

    config: ServiceConfig
    site_checks: dict[str, list[str]] = field(default_factory=dict)
    gate_checks: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [k for keys in self.site_checks.values() for k in keys] + self.gate_checks


def check_key(check: Check, health: HealthConfig) -> str:
    return json.dumps(
        [check.model_dump(mode="json"), health.model_dump(mode="json")], sort_keys=True
    )


class HealthMonitor:
    """Probe jobs, check health and the services each check belongs to."""

    def __init__(self, services: Iterable[ServiceConfig]) -> None:
        self.jobs: dict[str, ProbeJob] = {}
        self._checks: dict[str, CheckHealth] = {}
        # Read-only: every change goes through ``put``, which keeps ``_health`` true.
        self.checks: Mapping[str, CheckHealth] = MappingProxyType(self._checks)
        # Each service's health as last combined. The 1 s tick asks for every service's, and
        # a probe that changes nothing shown (an up check's latency) must not make it redo
        # the combination: a tenth of the tick's CPU at 500 services.
        self._health: dict[str, ServiceHealth] = {}
        self.subscribers: dict[str, set[str]] = defaultdict(set)
        self.services: dict[str, ServiceRuntime] = {}
        # When each check's last result was taken (its ``at``, monotonic), for ``expire``.
        self.heard: dict[str, float] = {}
        for service in services:
            self.add(service)

    def add(self, service: ServiceConfig) -> None:
        """Wire a service's checks; a check already probed for another service is shared
        (its health carries over, as on a reload that changed nothing about it)."""
        runtime = ServiceRuntime(service)
        for site in service.sites:
            runtime.site_checks[site.name] = self._keys(service, site.checks)
        runtime.gate_checks = self._keys(service, service.failback.gates)
        self.services[service.name] = runtime
        self._health.pop(service.name, None)

    def _keys(self, service: ServiceConfig, checks: Sequence[Check]) -> list[str]:
        keys = []
        for check in checks:
            key = check_key(check, service.health)
            self.jobs.setdefault(key, ProbeJob(key, check, service.health))
            self._checks.setdefault(key, CheckHealth())
            self.subscribers[key].add(service.name)
            keys.append(key)
        return keys

    def remove(self, name: str) -> None:
        """Unwire a service; checks no other service uses are dropped."""
        runtime = self.services.pop(name)
        self._health.pop(name, None)
        for key in runtime.keys:
            self.subscribers[key].discard(name)
            if not self.subscribers[key]:
                del self.subscribers[key], self.jobs[key], self._checks[key]
                self.heard.pop(key, None)

    def observe(self, key: str, result: ProbeResult) -> set[str]:
        """Fold a probe result in; return the services whose health may have changed."""
        job = self.jobs.get(key)
        if job is None:
            return set()  # a probe of a check a reload just removed
        before = self.checks[key]
        after = observe(before, result, rise=job.health.rise, fall=job.health.fall)
        self.heard[key] = max(result.at, self.heard.get(key, result.at))
        self.put(key, after)
        changed = after.status is not before.status
        if changed or after.settled(job.health.rise) != before.settled(job.health.rise):
            return set(self.subscribers[key])
        return set()

    def expire(self, now: float) -> list[str]:
        """Checks silent past their ``silence_limit`` (a hung probe worker): an up one
        becomes unknown, and down past ``silence_grace`` more; a result brings it back
        through ``rise`` as usual. Returns the checks whose status changed."""
        changed = []
        for key, at in self.heard.items():
            health, job = self._checks[key], self.jobs[key]
            silent = now - at
            limit = silence_limit(job.health)
            if silent <= limit or health.status is Status.DOWN:
                continue
            down = silent > limit + silence_grace(job.health)
            if not down and health.status is Status.UNKNOWN:
                continue
            status = Status.DOWN if down else Status.UNKNOWN
            last = ProbeResult(False, f"no probe result for {silent:.0f}s", 0.0, now, True)
            self.put(key, replace(health, status=status, since=now, streak=0, last=last))
            changed.append(key)
        return changed

    def put(self, key: str, health: CheckHealth) -> None:
        """Set a check's health (a probe folded in, or a cluster's voted verdict)."""
        before = self._checks.get(key)
        self._checks[key] = health
        if before is None or _shown(before) != _shown(health):
            for name in self.subscribers[key]:
                self._health.pop(name, None)

    def service_health(self, service: str) -> ServiceHealth:
        """Each site's health (``health.require`` combines its checks) and the gates'
        (gates always need all). Callers must not change what they are given."""
        cached = self._health.get(service)
        if cached is not None:
            return cached
        runtime = self.services[service]
        require = runtime.config.health.require
        sites = {site: self._combine(keys, require) for site, keys in runtime.site_checks.items()}
        health = ServiceHealth(sites, self._combine(runtime.gate_checks, "all").status)
        self._health[service] = health
        return health

    def _combine(self, keys: Sequence[str], require: str) -> SiteHealth:
        labels = [self.jobs[k].label for k in keys]
        return site_health(
            [self.checks[k] for k in keys], "any" if require == "any" else "all", labels
        )

    def started(self, service: str) -> bool:
        """True once every check of the service finished its start-up probes."""
        runtime = self.services[service]
        rise = runtime.config.health.rise
        return all(self.checks[k].settled(rise) for k in runtime.keys)


def _shown(health: CheckHealth) -> tuple[object, ...]:
    """What ``site_health`` reads of a check: its status, since when, and the reason of a
    down one (which counts its failures: ``status 503 x3``)."""
    return (health.status, health.since, health.reason if health.status is Status.DOWN else None)
