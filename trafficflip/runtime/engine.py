"""The reconcile step: health -> decide -> plan -> provider -> journal, for a set of services.

The scheduler only calls ``observe`` (a probe finished), ``tick`` (time passed) and
``reconcile`` (compare with the backend); every decision is made here, by calling the pure
core. Probe results that change a check's status trigger a convergence at once, so a
failover reaches the provider within fall x interval plus the time of the calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from trafficflip.backend.provider import Provider, Receipt
from trafficflip.backend.provider import read_only as read_only_provider
from trafficflip.config.loader import Config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.commands import CommandError, apply_command
from trafficflip.decision.decide import decide
from trafficflip.decision.model import (
    Answer,
    Event,
    JournalEntry,
    ProbeResult,
    ServiceState,
    SiteHealth,
    Status,
)
from trafficflip.decision.plan import Plan, plan_services, render
from trafficflip.errors import PermanentProviderError, ProviderError, UnsafePlanError
from trafficflip.runtime.monitor import GATES, HealthMonitor
from trafficflip.runtime.retry import backoff_delay
from trafficflip.runtime.state import ChangeRecord, Command, StateStore

log = logging.getLogger("trafficflip")
RETRY_CAP = 30.0
# GetChange is rate-limited with everything else: ask about pending changes this often.
CONFIRM_EVERY = 5.0


@dataclass
class ProviderStatus:
    """What the last reconcile of a provider said, for status and readiness."""

    ok: bool = True
    error: str = ""
    error_kind: str = ""
    errors: int = 0
    failures_in_row: int = 0
    last_success: float | None = None
    # Instances of the backend not holding the last answers (see Provider.lagging_instances).
    lagging: tuple[str, ...] = ()


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


class Engine:
    """Holds health and state for every service and drives providers towards decisions."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        providers: Mapping[str, Provider],
        clock: Callable[[], float] = time.time,
        *,
        read_only: bool = False,
    ) -> None:
        """``read_only`` builds a preview engine (``plan``): providers refuse every apply,
        nothing is scheduled or retried, and decisions are collected in ``previewed``
        instead of being logged as if they had happened."""
        self.config = config
        self.store = store
        self.read_only = read_only
        self.providers = (
            {name: read_only_provider(p) for name, p in providers.items()}
            if read_only
            else providers
        )
        self.previewed: list[tuple[str, Event]] = []
        self.clock = clock
        self.monitor = HealthMonitor(config.services)
        # Shared with the monitor, for readers (status, metrics, the scheduler).
        self.jobs, self.checks = self.monitor.jobs, self.monitor.checks
        self.services = self.monitor.services
        self.states: dict[str, ServiceState] = {}
        self.provider_status = {name: ProviderStatus() for name in providers}
        self._pending: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._locks = {name: asyncio.Lock() for name in providers}
        self._retry_handles: dict[str, asyncio.TimerHandle] = {}
        self._last_confirm = 0.0
        self._wakeups: dict[str, asyncio.TimerHandle] = {}
        self.listeners: list[EngineListener] = []
        for service in config.services:
            self.states[service.name] = store.load(service.name) or ServiceState()

    # -- health -----------------------------------------------------------------------------

    def observe(self, key: str, result: ProbeResult) -> None:
        """Fold a probe result in; converge at once the services whose health changed."""
        self._emit("probed", key, result)
        for name in self.monitor.observe(key, result):
            self.request(name)

    def site_health(self, service: str) -> dict[str, SiteHealth]:
        return self.monitor.site_health(service)

    def started(self, service: str) -> bool:
        return self.monitor.started(service)

    # -- decisions --------------------------------------------------------------------------

    def request(self, service: str) -> None:
        """Converge ``service`` soon; requests arriving together are applied in one batch."""
        if self.read_only:
            return  # a preview converges once, explicitly, with apply=False
        self._pending.add(service)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, set()
            await self.converge(batch)

    async def tick(self) -> None:
        """Take operator commands and let time-based decisions (stabilize, ramp steps) fire."""
        self.take_commands()
        changed = [name for name in self.services if self.decide(name)]
        if changed:
            await self.converge(changed, decided=True)
        if self.clock() - self._last_confirm >= CONFIRM_EVERY:
            await self.confirm_changes()

    def take_commands(self) -> dict[int, str]:
        """Apply every pending operator command; return each one's result by id."""
        results = {}
        for command in self.store.pending():
            results[command.id] = self._take(command)
            self.store.complete(command.id, results[command.id])
        return results

    def _take(self, command: Command) -> str:
        runtime = self.services.get(command.service)
        if runtime is None:
            return f"error: unknown service {command.service!r}"
        try:
            state, event = apply_command(
                runtime.config, self.states[command.service], command.name, command.args
            )
        except CommandError as exc:
            log.warning("command_rejected service=%s %s", command.service, exc)
            return f"error: {exc}"
        event = replace(event, message=f"{event.message} by {command.source}")
        self._commit(command.service, state, [event])
        return "ok"

    def decide(self, name: str) -> bool:
        """Run the decision core for one service; persist and log; True if shares changed."""
        runtime = self.services[name]
        health = self.site_health(name)
        gates = health.pop(GATES).status
        before = self.states[name]
        decision = decide(
            runtime.config, before, health, gates, self.clock(), started=self.started(name)
        )
        if decision.state != before or decision.events:
            self._commit(name, decision.state, decision.events)
        self._wake_at(name, self._next_due(name))
        return decision.state.shares != before.shares

    def _next_due(self, name: str) -> float | None:
        """When time alone may change this service's decision: a ramp step or a stabilize
        period ending. The 1 s tick would find it too, up to a second late."""
        service = self.services[name].config
        state = self.states[name]
        if state.ramp is not None:
            if state.applied_at is None:
                return None  # the step's hold starts when it is applied
            return max(state.ramp.since, state.applied_at) + service.failback.step_duration
        returning = [
            h.since + service.failback.stabilize
            for site, h in self.site_health(name).items()
            if site != GATES
            and site not in state.members
            and h.status is Status.UP
            and h.since is not None
        ]
        return min(returning, default=None)

    def _wake_at(self, name: str, due: float | None) -> None:
        handle = self._wakeups.pop(name, None)
        if handle is not None:
            handle.cancel()
        if self.read_only or due is None or due <= self.clock():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside the service (plan preview, tests): nothing to wake
        self._wakeups[name] = loop.call_later(due - self.clock(), self.request, name)

    def _commit(self, name: str, state: ServiceState, events: Iterable[Event]) -> None:
        now = self.clock()
        entries = []
        for event in events:
            if self.read_only:
                self.previewed.append((name, event))
                continue
            log.log(
                logging.WARNING if event.kind in ("failover", "all_down") else logging.INFO,
                "%s %s: %s",
                event.kind,
                name,
                event.message,
            )
            data: dict[str, object] = {"site": event.site} if event.site else {}
            if state.shares is not None:
                data["shares"] = dict(state.shares)
            entries.append(JournalEntry(now, name, event.kind, event.message, data))
        self.states[name] = state
        self.store.save(name, state, entries)
        self._emit("journaled", entries)

    # -- providers --------------------------------------------------------------------------

    async def converge(
        self, names: Iterable[str], *, decided: bool = False, apply: bool = True
    ) -> dict[str, Plan]:
        """Decide (unless done) and bring each provider's answers to the decided shares."""
        names = list(names)
        if not decided:
            for name in names:
                self.decide(name)
        by_provider: dict[str, list[ServiceConfig]] = defaultdict(list)
        for name in names:
            service = self.services[name].config
            if self.states[name].shares is not None:
                by_provider[service.provider].append(service)
        plans = {}
        for provider_name, services in by_provider.items():
            async with self._locks[provider_name]:
                plan = await self._sync_provider(provider_name, services, apply=apply)
            if plan is not None:
                plans[provider_name] = plan
        return plans

    async def reconcile(self, *, apply: bool = True) -> dict[str, Plan]:
        """Compare every service with its backend and correct drift; confirm changes."""
        self.take_commands()
        plans = await self.converge(list(self.services), apply=apply)
        if apply:
            await self.confirm_changes()
        return plans

    async def _sync_provider(
        self, provider_name: str, services: list[ServiceConfig], *, apply: bool
    ) -> Plan | None:
        provider = self.providers[provider_name]
        status = self.provider_status[provider_name]
        took: float | None = None
        plan: Plan | None = None
        try:
            actual = await provider.read(services)
            plan = plan_services(
                (s, self._desired(provider, s), actual.get(s.name, ())) for s in services
            )
            if not apply:
                return plan
            started = time.monotonic()
            receipt = await provider.apply(plan)
            took = time.monotonic() - started if plan else None
        except (ProviderError, UnsafePlanError) as exc:
            status.lagging = provider.lagging_instances
            failed = [s for s in services if s.name in (getattr(exc, "services", None) or ())]
            if plan is not None and apply and failed:
                # The provider applied the rest of the plan before naming these.
                self._applied(provider_name, [s for s in services if s not in failed], plan, None)
            self._provider_failed(provider_name, failed or services, exc)
            self._emit("provider_synced", provider_name, exc, took)
            return None
        status.lagging = provider.lagging_instances
        status.ok, status.error, status.failures_in_row = True, "", 0
        status.last_success = self.clock()
        self._applied(provider_name, services, plan, receipt)
        self._emit("provider_synced", provider_name, None, took)
        return plan

    def _desired(self, provider: Provider, service: ServiceConfig) -> tuple[Answer, ...]:
        shares = self.states[service.name].shares or {}
        return render(service, shares, weighted=provider.SUPPORTS_WEIGHTS)

    def _applied(
        self, provider_name: str, services: list[ServiceConfig], plan: Plan, receipt: Receipt | None
    ) -> None:
        now = self.clock()
        for service in services:
            changes = plan.for_service(service.name)
            state = self.states[service.name]
            entries = []
            if changes:
                text = "; ".join(str(c) for c in changes)
                # Shares already applied, yet the backend differed: someone changed it.
                kind = "drift" if state.applied_at is not None else "provider_change"
                log.log(
                    logging.WARNING if kind == "drift" else logging.INFO,
                    "%s %s: %s",
                    kind,
                    service.name,
                    text,
                )
                data: dict[str, object] = {"provider": provider_name}
                if receipt is not None:
                    data["change_ids"] = list(receipt.change_ids)
                    self.store.record_change(
                        ChangeRecord(
                            service.name,
                            provider_name,
                            receipt.change_ids,
                            receipt.submitted_at,
                            receipt.in_sync,
                            now if receipt.in_sync else None,
                        )
                    )
                entries.append(JournalEntry(now, service.name, kind, text, data))
            if state.applied_at is None or entries:
                state = replace(state, applied_at=now)
                self.states[service.name] = state
                self.store.save(service.name, state, entries)
                self._emit("journaled", entries)
                self._wake_at(service.name, self._next_due(service.name))

    def _provider_failed(
        self, provider_name: str, services: list[ServiceConfig], exc: Exception
    ) -> None:
        status = self.provider_status[provider_name]
        status.ok, status.error = False, str(exc)
        status.error_kind = getattr(exc, "kind", type(exc).__name__)
        status.errors += 1
        status.failures_in_row += 1
        names = ", ".join(s.name for s in services)
        log.error(
            "provider_error provider=%s services=%s kind=%s error=%s",
            provider_name,
            names,
            status.error_kind,
            exc,
        )
        entries = [
            JournalEntry(
                self.clock(), s.name, "provider_error", str(exc), {"provider": provider_name}
            )
            for s in services
        ]
        self.store.append(entries)
        self._emit("journaled", entries)
        if isinstance(exc, PermanentProviderError | UnsafePlanError):
            return  # not hammered: the reconcile interval retries it
        delay = max(1.0, backoff_delay(status.failures_in_row, base=1.0, cap=RETRY_CAP))
        for service in services:
            self._retry_later(service.name, delay)

    def _retry_later(self, name: str, delay: float) -> None:
        """The pending change stays in the state; ask again after ``delay``."""
        if self.read_only:
            return
        if name in self._retry_handles and not self._retry_handles[name].cancelled():
            self._retry_handles[name].cancel()
        loop = asyncio.get_running_loop()
        self._retry_handles[name] = loop.call_later(delay, self.request, name)

    async def confirm_changes(self) -> None:
        """Ask providers whether recorded changes are in sync (Route53 ``INSYNC``)."""
        self._last_confirm = self.clock()
        for name in self.services:
            record = self.store.last_change(name)
            if record is None or record.in_sync or record.provider not in self.providers:
                continue
            receipt = Receipt(record.provider, record.change_ids, record.submitted_at, False)
            try:
                in_sync = await self.providers[record.provider].confirm(receipt)
            except ProviderError as exc:
                log.warning("confirm_failed service=%s error=%s", name, exc)
                continue
            if in_sync:
                self.store.record_change(replace(record, in_sync=True, confirmed_at=self.clock()))
                lag = self.clock() - record.submitted_at
                log.info(
                    "in_sync %s: change %s after %.1fs", name, ",".join(record.change_ids), lag
                )

    def _emit(self, hook: str, *args: object) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, hook)(*args)
            except Exception:  # an observer must never stop a traffic change
                log.exception("listener_error listener=%s hook=%s", type(listener).__name__, hook)
