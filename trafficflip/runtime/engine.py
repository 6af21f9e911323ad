"""The engine: health -> decide -> provider sync, for the services it runs.

The scheduler calls ``observe`` (a probe finished), ``tick`` (time passed) and ``reconcile``
(compare with the backends); every decision is made by the pure core. A decision that
changes shares asks its provider's ``ProviderSync`` at once, so a failover reaches the
provider within fall x interval plus the time of the calls. Events go through the one
``Journal``; persistence through the one ``StateWriter``; retry through the syncs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from trafficflip.backend.provider import Provider
from trafficflip.backend.provider import read_only as read_only_provider
from trafficflip.config.schema import JournalConfig, ServiceConfig
from trafficflip.decision.commands import CommandResult, apply_command
from trafficflip.decision.decide import decide, fit_to_config, move_starts_at, next_step_at
from trafficflip.decision.maintenance import begin_windows, end_expired, format_wall
from trafficflip.decision.model import (
    Event,
    EventKind,
    ProbeResult,
    ServiceHealth,
    ServiceState,
    SiteHealth,
    Status,
)
from trafficflip.decision.plan import Plan, render
from trafficflip.errors import CommandError
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.journal import Journal, resumed_state
from trafficflip.runtime.listeners import EngineListener, Listeners
from trafficflip.runtime.monitor import HealthMonitor
from trafficflip.runtime.state import Command, StateStore
from trafficflip.runtime.sync import ProviderStatus, ProviderSync
from trafficflip.runtime.writer import StateWriter

__all__ = ["Engine", "EngineListener", "ProviderStatus", "Reload"]

log = logging.getLogger("trafficflip")
# GetChange is rate-limited with everything else: ask about pending changes this often.
CONFIRM_EVERY = 5.0
# A decision with one of these moves traffic off a dead site: it cuts short a sync backoff.
URGENT = frozenset({EventKind.FAILOVER, EventKind.SITE_OUT, EventKind.ALL_DOWN})
# Services decided by one tick between two yields to the event loop.
TICK_SLICE = 200
# Services one tick visits at most; a larger fleet is gone through over several ticks. The
# tick is a safety net and the clock for maintenance windows: failovers are decided when a
# probe changes health, and ramp steps, stabilize and TTL waits by timed wake-ups, so they
# never wait for it. Bounded, it costs the same at 5,000 services as at 1,000
# (bench/fleet_size.py, docs/performance.md).
TICK_SERVICES = 1000


@dataclass
class Reload:
    """What a reload changed, for the journal and the reload endpoint."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{k}: {', '.join(v)}" for k, v in vars(self).items() if v]
        return "; ".join(parts) or "no service changed"


class Engine:
    """Holds health and state for every service and drives providers towards decisions."""

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        store: StateStore,
        providers: Mapping[str, Provider],
        clock: Clock | None = None,
        *,
        read_only: bool = False,
        retention: JournalConfig | None = None,
        writer: StateWriter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``read_only`` builds a preview engine (``plan``): providers refuse every apply,
        nothing is written, scheduled or retried, and decisions are collected in
        ``previewed`` instead of being logged as if they had happened. ``writer`` replaces
        the store's own writer thread, ``rng`` the retry jitter's randomness (the fault
        simulation passes both, so a seed replays a run exactly)."""
        self.clock = clock or Clock()
        self.store = store
        self.read_only = read_only
        self.listeners = Listeners()
        self._rng = rng
        if read_only:
            self.writer = None
        else:
            self.writer = writer or StateWriter(store, retention=retention)
        self.journal = Journal(self.writer, self.clock, self.listeners)
        self.monitor = HealthMonitor(())
        # Shared with the monitor, for readers (status, metrics, the scheduler).
        self.jobs, self.checks = self.monitor.jobs, self.monitor.checks
        self.services = self.monitor.services
        self.states: dict[str, ServiceState] = {}
        self.providers: dict[str, Provider] = {}
        self.syncs: dict[str, ProviderSync] = {}
        self.provider_status: dict[str, ProviderStatus] = {}
        self._wakeups: dict[str, asyncio.TimerHandle] = {}
        # More reasons not to be ready, from components beside the engine (the cluster node).
        self.readiness: list[Callable[[], list[str]]] = []
        self._site_status: dict[str, dict[str, Status]] = {}
        # Ids of commands applied and still pending in the store (``take_commands``).
        self._commands_taken: set[int] = set()
        self._last_confirm = -CONFIRM_EVERY
        self._tick_from = 0  # where the next tick starts in the list of services
        # Start-up: first decisions are held back until every service has its start-up
        # probes (or this deadline passes), so N services converge in a handful of calls
        # rather than one call per service as each finishes its rise probes.
        self._startup_budget = max((startup_time(s) for s in services), default=0.0)
        self._starting_until: float | None = None  # set by the first tick: the timers run
        self._started_up = False
        self._unstarted = {s.name for s in services}
        self._set_providers(providers)
        for service in services:
            self._add(service)
        if self.writer is not None:
            self.writer.start()

    @property
    def previewed(self) -> list[tuple[str, Event]]:
        return self.journal.previewed

    def _set_providers(self, providers: Mapping[str, Provider]) -> None:
        previous = {name: sync.status for name, sync in self.syncs.items()}
        replaced = dict(self.syncs)
        for sync in replaced.values():
            sync.retire()  # its call in flight lands and is journaled; nothing more
        self.providers = {
            name: read_only_provider(p) if self.read_only else p for name, p in providers.items()
        }
        self.syncs = {
            name: ProviderSync(
                name,
                provider,
                services=lambda: {n: r.config for n, r in self.services.items()},
                states=self.states,
                journal=self.journal,
                clock=self.clock,
                listeners=self.listeners,
                after_apply=self._applied,
                rng=self._rng,
                predecessor=replaced.get(name),
            )
            for name, provider in self.providers.items()
        }
        for name, sync in self.syncs.items():
            # A reload keeps what is known of a provider (its last success, its errors):
            # readiness must not fall back to "no reconcile yet".
            sync.status = previous.get(name, sync.status)
        self.provider_status = {name: sync.status for name, sync in self.syncs.items()}

    # -- services -------------------------------------------------------------------------

    def _add(self, service: ServiceConfig) -> None:
        self.monitor.add(service)
        stored = self.store.load(service.name)
        state = resumed_state(stored, self.clock) if stored is not None else ServiceState()
        self._fit(service, state)

    def _fit(self, service: ServiceConfig, state: ServiceState) -> None:
        """Make a stored state meet the service's current sites (renamed or removed)."""
        fitted = fit_to_config(service, state)
        self.states[service.name] = fitted.state
        if fitted.events:
            self.journal.record(service.name, fitted.events, state=fitted.state)

    def reload(
        self, services: Sequence[ServiceConfig], providers: Mapping[str, Provider]
    ) -> Reload:
        """Take a new configuration: checks start and stop, settings apply, and the state
        of every kept service (ramps included) carries on. Removed services keep their
        records as they are: never deleted."""
        new = {s.name: s for s in services}
        result = Reload()
        for name in list(self.services):
            if name not in new:
                self.monitor.remove(name)
                self.states.pop(name, None)
                self._site_status.pop(name, None)
                result.removed.append(name)
                self.journal.record(
                    name,
                    [
                        Event(
                            EventKind.SERVICE_REMOVED,
                            "removed from the configuration; its records are kept as they are",
                        )
                    ],
                )
        for name, service in new.items():
            if name not in self.services:
                self._add(service)
                result.added.append(name)
                self.journal.record(name, [Event(EventKind.SERVICE_ADDED, "added")])
            elif service != self.services[name].config:
                before = self.services[name].config
                self.monitor.remove(name)
                self.monitor.add(service)
                self._fit(service, _rewrite_if_answers_changed(before, service, self.states[name]))
                result.changed.append(name)
        self._set_providers(providers)
        for name in new:
            self.request(name)
        return result

    # -- health ---------------------------------------------------------------------------

    def observe(self, key: str, result: ProbeResult) -> None:
        """Fold a probe result in; decide at once for the services whose health changed."""
        self.listeners.probed(key, result)
        for name in self.monitor.observe(key, result):
            self._log_transitions(name)
            self.request(name)

    def expire_silent(self) -> None:
        """Checks without a result for too long (a hung probe worker) turn unknown, then
        down (``HealthMonitor.expire``); called by whatever runs the probes out of process."""
        for key in self.monitor.expire(self.clock.now()):
            for name in self.monitor.subscribers[key]:
                self._log_transitions(name)
                self.request(name)

    def service_health(self, service: str) -> ServiceHealth:
        return self.monitor.service_health(service)

    def site_health(self, service: str) -> dict[str, SiteHealth]:
        return self.monitor.service_health(service).sites

    def started(self, service: str) -> bool:
        return self.monitor.started(service)

    def _log_transitions(self, name: str) -> None:
        """One INFO line per site going up or down, naming the check that caused it."""
        if self.read_only:
            return
        config, state = self.services[name].config, self.states[name]
        before = self._site_status.setdefault(name, {})
        for site, health in self.site_health(name).items():
            if before.get(site, Status.UNKNOWN) is health.status:
                continue
            before[site] = health.status
            if health.status is Status.DOWN:
                held = " (held: no automatic change)" if state.held else ""
                log.info(
                    "site_down service=%s site=%s reason=%r%s", name, site, health.reason, held
                )
            elif health.status is Status.UP:
                note = ""
                if site not in state.members and health.since is not None:
                    until = self.clock.to_wall(health.since + config.failback.stabilize)
                    note = f" stabilizing until {_clock_time(until)}"
                log.info(
                    "site_up service=%s site=%s checks=%r%s",
                    name,
                    site,
                    self._checks_of(name, site),
                    note,
                )

    def _checks_of(self, name: str, site: str) -> str:
        """The site's checks as reasons name them (``http http://...``), as configured."""
        keys = self.services[name].site_checks.get(site, [])
        return ", ".join(self.monitor.jobs[key].label for key in keys if key in self.monitor.jobs)

    # -- decisions ------------------------------------------------------------------------

    def request(self, name: str) -> None:
        """Decide for ``name`` now and bring its provider to the decision soon."""
        if name not in self.services:
            return
        urgent = self.decide(name)
        self._converge_soon(name, urgent=urgent)

    def _converge_soon(self, name: str, *, urgent: bool = False) -> None:
        state = self.states[name]
        if self.read_only or state.shares is None or state.applied_at is not None:
            return
        urgent = urgent or self._moves_off_dead(name, state)
        if not urgent and self._starting():
            return  # taken together when start-up ends (see __init__)
        self.syncs[self.services[name].config.provider].request([name], urgent=urgent)

    def _starting(self) -> bool:
        """True while start-up holds first decisions back; at its end, release them all."""
        if self._started_up:
            return False
        # Amortized O(1): a service leaves the set once, when it is first seen started.
        while self._unstarted:
            name = next(iter(self._unstarted))
            if name in self.services and not self.started(name):
                break
            self._unstarted.discard(name)
        deadline = self._starting_until
        if self._unstarted and (deadline is None or self.clock.now() < deadline):
            return True
        self._started_up = True
        log.info(
            "startup_complete services=%d not_started=%d", len(self.services), len(self._unstarted)
        )
        self._sync_all()
        return False

    def _sync_all(self) -> None:
        """Read and correct every decided service: what the store said was applied may be
        older than what the provider holds (the store refused writes before a crash), so
        start-up ends with a read, not with trust; failovers among them are urgent."""
        for provider, members in self._by_provider(self.services).items():
            ready = [n for n in members if self.states[n].shares is not None]
            # Only a write still to land is urgent: a reconcile of what was applied reads.
            urgent = [
                n
                for n in ready
                if self.states[n].applied_at is None and self._moves_off_dead(n, self.states[n])
            ]
            if urgent:
                self.syncs[provider].request(urgent, urgent=True)
            self.syncs[provider].request(ready)

    def _moves_off_dead(self, name: str, state: ServiceState) -> bool:
        """Whether a write not yet applied takes traffic off a site seen down (or serves
        every site when all are down): urgent, whatever decision made it, so a failover
        resumed after a restart or retried after a failed ramp step is never behind a
        backoff."""
        if state.all_down:
            return True
        shares = state.shares or {}
        sites = self.site_health(name)
        return any(
            shares.get(site, 0) == 0 and health.status is Status.DOWN
            for site, health in sites.items()
        )

    async def tick(self) -> None:
        """Take operator commands and let time-based decisions (stabilize, ramp steps) fire."""
        if self._starting_until is None:
            self._starting_until = self.clock.now() + self._startup_budget
        self.take_commands()
        for index, name in enumerate(self._tick_round()):
            if index and index % TICK_SLICE == 0:
                await asyncio.sleep(0)  # probes run between slices of a large fleet
            if name not in self.services:
                continue  # removed by a reload meanwhile
            self.end_maintenance(name)
            urgent = self.decide(name)
            self._converge_soon(name, urgent=urgent)
        if self.clock.now() - self._last_confirm >= CONFIRM_EVERY:
            await self.confirm_changes()

    def _tick_round(self) -> list[str]:
        """The services this tick visits: all of them, or the next ``TICK_SERVICES`` in
        turn, so every service is visited at least every ceil(N / TICK_SERVICES) seconds."""
        names = list(self.services)
        if len(names) <= TICK_SERVICES:
            return names
        start = self._tick_from % len(names)
        self._tick_from = start + TICK_SERVICES
        return (names[start:] + names[:start])[:TICK_SERVICES]

    def decide(self, name: str) -> bool:
        """Run the decision core for one service and journal it; True when traffic must
        move off a dead site at once. A failure here is this service's alone."""
        runtime = self.services[name]
        before = self.states[name]
        health = self.service_health(name)
        now = self.clock.now()
        try:
            decision = decide(runtime.config, before, health, now, started=self.started(name))
        except Exception as exc:  # a bug for one service must not stop the others' failovers
            log.exception("decide_error service=%s", name)
            self.journal.error(name, f"cannot decide: {type(exc).__name__}: {exc}")
            return False
        if decision.state != before or decision.events:
            self.states[name] = decision.state
            self.journal.record(name, decision.events, state=decision.state)
        self._schedule_wakeup(name, health)
        return any(e.kind in URGENT for e in decision.events)

    def end_maintenance(self, name: str) -> None:
        """Begin the service's maintenance windows that are open and end the maintenance
        whose wall-clock end has passed (journaled and notified); the decision that follows
        moves the traffic."""
        wall = self.clock.wall()
        begun = begin_windows(self.services[name].config, self.states[name], wall)
        for changed in (begun, end_expired(begun.state, wall)):
            if changed.state != self.states[name]:
                self.states[name] = changed.state
                self.journal.record(name, changed.events, state=changed.state)

    def _applied(self, name: str) -> None:
        """A provider took the service's decided answers: a planned move whose short TTL is
        now in place says when it starts; the next timed decision is scheduled."""
        runtime = self.services.get(name)
        if runtime is not None:
            starts = move_starts_at(runtime.config, self.states[name])
            if starts is not None:
                config, state = runtime.config, self.states[name]
                message = (
                    f"TTL {state.ttl}s in place; the move starts at "
                    f"{format_wall(self.clock.to_wall(starts))}, once the {config.ttl}s "
                    "answers have expired"
                )
                self.journal.record(name, [Event(EventKind.TTL_LOWERED, message)])
        self._schedule_wakeup(name)

    def _schedule_wakeup(self, name: str, health: ServiceHealth | None = None) -> None:
        """Decide again when time alone may change the decision (the 1 s tick would find it
        too, up to a second late)."""
        handle = self._wakeups.pop(name, None)
        if handle is not None:
            handle.cancel()
        runtime = self.services.get(name)
        if self.read_only or runtime is None:
            return
        health = health if health is not None else self.service_health(name)
        due = next_step_at(runtime.config, self.states[name], health)
        now = self.clock.now()
        if due is None or due <= now:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # outside the service (tests): the next tick decides
        self._wakeups[name] = loop.call_later(due - now, self.request, name)

    # -- operator commands ----------------------------------------------------------------

    def take_commands(self) -> dict[int, CommandResult]:
        """Apply every pending operator command from the store; each one's result by id."""
        if self.read_only:
            return {}
        try:
            pending = self.store.pending()
        except Exception as exc:  # a broken store must not stop the tick's decisions
            log.error("store_error reading commands: %s", exc)
            return {}
        results = {}
        for command in pending:
            # Pending until the store takes its completion (which may fail for a while):
            # applied once here all the same, or each tick would journal it and undo later moves.
            if command.id not in self._commands_taken:
                results[command.id] = self._take(command)
                if self.writer is not None:
                    self.writer.complete(command.id, results[command.id].encode())
        self._commands_taken = {c.id for c in pending}
        return results

    def _take(self, command: Command) -> CommandResult:
        return self.execute(command.service, command.name, command.args, command.source)

    def execute(
        self, service: str, name: str, args: Mapping[str, object], source: str
    ) -> CommandResult:
        """Apply one operator command now (the API's path; the CLI's goes through the
        store). Journaled with its source; the traffic moves at once."""
        runtime = self.services.get(service)
        if runtime is None:
            return CommandResult.rejected(f"unknown service {service!r}")
        try:
            state, event = apply_command(
                runtime.config, self.states[service], name, dict(args), wall=self.clock.wall()
            )
        except CommandError as exc:
            log.warning("command_rejected service=%s %s", service, exc)
            return CommandResult.rejected(str(exc))
        event = replace(event, message=f"{event.message} by {source}")
        self.states[service] = state
        self.journal.record(service, [event], state=state)
        self.request(service)
        return CommandResult(True)

    # -- providers ------------------------------------------------------------------------

    def _by_provider(self, names: Iterable[str]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for name in names:
            if name in self.services:
                grouped.setdefault(self.services[name].config.provider, []).append(name)
        return grouped

    async def converge(self, names: Iterable[str], *, apply: bool = True) -> dict[str, Plan]:
        """Decide and bring each provider's answers to the decisions now; the plans (a
        preview passes ``apply=False``)."""
        names = list(names)
        for name in names:
            self.end_maintenance(name)  # a preview shows a window open now, as a tick would
            self.decide(name)
        plans = {}
        for provider, members in self._by_provider(names).items():
            plan = await self.syncs[provider].sync(members, apply=apply)
            if plan is not None:
                plans[provider] = plan
        return plans

    async def reconcile(self) -> None:
        """Compare every service with its backend and correct drift; confirm changes."""
        self.take_commands()
        for name in self.services:
            self.decide(name)
        if self._starting():
            return  # first decisions go out together when start-up ends
        self._sync_all()
        await self.idle()
        await self.confirm_changes()

    async def idle(self) -> None:
        """Return once no provider has anything pending or in flight."""
        for sync in list(self.syncs.values()):
            await sync.idle()

    async def confirm_changes(self) -> None:
        """Ask providers whether recorded changes are in sync (Route53 ``INSYNC``)."""
        self._last_confirm = self.clock.now()
        if self.writer is None:
            return
        for name in list(self.services):
            try:
                record = self.store.last_change(name)
            except Exception as exc:
                log.error("store_error reading changes: %s", exc)
                return
            if record is None or record.in_sync or record.provider not in self.syncs:
                continue
            confirmed = await self.syncs[record.provider].confirm(record)
            if confirmed is not None:
                self.writer.record_change(confirmed)

    def halt(self) -> None:
        """Stop syncing and timers at once; what is queued for the store stays queued."""
        for handle in self._wakeups.values():
            handle.cancel()
        for sync in self.syncs.values():
            sync.close()

    async def close(self) -> None:
        """Stop syncing and timers, flush what is queued for the store."""
        self.halt()
        if self.writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.writer.stop)


def _rewrite_if_answers_changed(
    before: ServiceConfig, after: ServiceConfig, state: ServiceState
) -> ServiceState:
    """A reloaded service whose answers change with the same shares (a new ttl or target)
    is written again: not applied yet, so the sync journals it as ours, not as drift."""
    if state.shares is None:
        return state
    old = render(before, state.shares, weighted=True, ttl=state.ttl)
    new = render(after, state.shares, weighted=True, ttl=state.ttl)
    return state if old == new else replace(state, applied_at=None)


def startup_time(service: ServiceConfig) -> float:
    """How long a service's checks need to finish their start-up probes, with margin: the
    first probe comes within an interval (runs are spread), then ``rise`` of them."""
    health = service.health
    return 2 * ((max(health.rise, 1) + 1) * health.interval + health.timeout) + 1.0


def _clock_time(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))
