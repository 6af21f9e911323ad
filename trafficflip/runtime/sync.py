"""Provider sync: the only caller of one provider, and the one owner of its retry and backoff.

Decisions ask for services to be synced; a sync worker turns everything asked for into one
read-plan-apply at a time. Decisions made while a call is in flight accumulate and go
together in the next call, so a mass failover of 500 services is a handful of calls, and
a failover waits behind at most the one call in flight. The desired answers are computed
when the call is made, from the newest decisions: a retry re-plans everything pending
rather than re-sending a stale batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from trafficflip.backend.provider import Provider, Receipt
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer, Event, EventKind, ServiceState
from trafficflip.decision.plan import Change, Plan, diff, make_plan, render
from trafficflip.errors import (
    PermanentProviderError,
    ProviderError,
    TrafficflipError,
    TransientProviderError,
    UnsafePlanError,
)
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.journal import Journal
from trafficflip.runtime.listeners import Listeners
from trafficflip.runtime.retry import backoff_delay
from trafficflip.runtime.state import ChangeRecord

log = logging.getLogger("trafficflip")
RETRY_BASE, RETRY_CAP = 1.0, 30.0
# How long answers read or written stay good enough to plan a failover on without a read
# (providers with PLAN_URGENT_FROM_KNOWN); the reconcile reads far more often than this.
KNOWN_MAX_AGE = 120.0
# A log line names this many services at most: a failed call of a large zone is about
# thousands, and each service's journal has the error anyway.
LOG_NAMES = 10
# What a sync writes for a service: its shares and its TTL override.
Written = tuple[dict[str, int] | None, int | None]


def _written(state: ServiceState) -> Written:
    return state.shares, state.ttl


@dataclass
class ProviderStatus:
    """What the last sync of a provider said, for status and readiness."""

    ok: bool = True
    error: str = ""
    error_kind: str = ""
    errors: int = 0
    failures_in_row: int = 0
    last_success: float | None = None  # wall time
    # Instances of the backend not holding the last answers (see Provider.lagging_instances).
    lagging: tuple[str, ...] = ()
    pending: int = 0


class ProviderSync:
    """Brings one provider to the decided shares; see the module docstring."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        *,
        services: Callable[[], Mapping[str, ServiceConfig]],
        states: dict[str, ServiceState],
        journal: Journal,
        clock: Clock,
        listeners: Listeners,
        after_apply: Callable[[str], None],
    ) -> None:
        self.name = name
        self.provider = provider
        self.status = ProviderStatus()
        self._services = services
        self._states = states
        self._journal = journal
        self._clock = clock
        self._listeners = listeners
        self._after_apply = after_apply
        self._pending: set[str] = set()
        self._urgent_names: set[str] = set()
        # Service -> (when, answers) last read from or written to the backend.
        self._known: dict[str, tuple[float, tuple[Answer, ...]]] = {}
        self._last_write: float | None = None
        self._urgent = asyncio.Event()
        self._quiet = asyncio.Event()  # set while no call is in flight
        self._quiet.set()
        self._worker: asyncio.Task[None] | None = None
        self._retry_at: float | None = None
        self._throttled = False
        self._last_error: dict[str, str] = {}

    # -- asking --------------------------------------------------------------------------

    def request(self, names: Iterable[str], *, urgent: bool = False) -> None:
        """Sync these services soon; ``urgent`` (a failover) cuts short a backoff wait,
        unless the backend asked us to wait (throttling)."""
        names = set(names)
        self._pending.update(names)
        self.status.pending = len(self._pending)
        if urgent:
            self._urgent_names.update(names)
            self._urgent.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def retry_at(self) -> float | None:
        """When the next attempt after a transient failure is due (monotonic), if any."""
        return self._retry_at

    async def idle(self) -> None:
        """Return once no call is in flight and nothing is pending but a retry's wait."""
        while True:
            await self._quiet.wait()
            if not self._pending or self._retry_at is not None:
                return
            await asyncio.sleep(0)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def drop_pending(self) -> None:
        """Forget every pending service and retry wait, and stop the worker (cluster mode:
        this instance stopped leading, and a retry of its term must never be sent)."""
        self.close()
        self._pending.clear()
        self._urgent_names.clear()
        self._retry_at = None
        self.status.pending = 0

    async def _work(self) -> None:
        while self._pending:
            await self._wait_for_retry()
            await self._wait_for_spacing()
            batch, self._pending = self._pending, set()
            urgent = bool(batch & self._urgent_names)
            self._urgent_names -= batch
            self.status.pending = 0
            self._quiet.clear()
            try:
                await self.sync(batch, urgent=urgent)
            except Exception as exc:  # never lose the worker: what was pending is retried
                log.exception("sync_error provider=%s", self.name)
                self._failed(sorted(batch), exc)
            finally:
                self._quiet.set()

    async def _wait_for_retry(self) -> None:
        while self._retry_at is not None:
            delay = self._retry_at - self._clock.now()
            if delay <= 0:
                break
            self._urgent.clear()
            try:
                await asyncio.wait_for(self._urgent.wait(), delay)
            except TimeoutError:
                break
            if not self._throttled:
                break  # a failover does not wait out a backoff of ours
        self._retry_at = None
        self._urgent.clear()

    async def _wait_for_spacing(self) -> None:
        """Let decisions gather for the provider's ``WRITE_SPACING`` after the last write."""
        spacing = self.provider.WRITE_SPACING
        if spacing <= 0 or self._last_write is None:
            return
        delay = self._last_write + spacing - self._clock.now()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- one read-plan-apply --------------------------------------------------------------

    async def sync(
        self, names: Iterable[str], *, apply: bool = True, urgent: bool = False
    ) -> Plan | None:
        """Read, plan and (with ``apply``) apply the named services; the plan, or None when
        the provider failed. A service that cannot be planned is left out, not the batch.
        An ``urgent`` batch (a failover) on a provider that allows it is planned from the
        answers last read or written, without reading first."""
        services = self._services()
        configs = [services[n] for n in sorted(names) if n in services]
        configs = [s for s in configs if self._states[s.name].shares is not None]
        if not configs:
            return Plan()
        actual = self._known_answers(configs) if urgent and apply else None
        read_first = actual is None
        if actual is None:
            try:
                actual = await self.provider.read(configs)
            except ProviderError as exc:
                self._failed([s.name for s in configs], exc)
                return None
            now = self._clock.now()
            self._known.update({name: (now, tuple(a)) for name, a in actual.items()})
        planned = {s.name: _written(self._states[s.name]) for s in configs}
        plan = self._plan(configs, actual, read_first=read_first)
        if not apply:
            return plan
        return await self._apply(plan, configs, planned)

    def _known_answers(
        self, configs: list[ServiceConfig]
    ) -> Mapping[str, tuple[Answer, ...]] | None:
        """Every service's answers last read or written, if the provider plans failovers on
        them and all are recent; else None (read first)."""
        if not self.provider.PLAN_URGENT_FROM_KNOWN:
            return None
        oldest = self._clock.now() - KNOWN_MAX_AGE
        known = {s.name: self._known.get(s.name) for s in configs}
        if any(entry is None or entry[0] < oldest for entry in known.values()):
            return None
        return {name: entry[1] for name, entry in known.items() if entry is not None}

    def _plan(
        self,
        configs: list[ServiceConfig],
        actual: Mapping[str, Iterable[Answer]],
        *,
        read_first: bool,
    ) -> Plan:
        changes: list[Change] = []
        desired: dict[str, tuple[Answer, ...]] = {}
        for service in configs:
            try:
                state = self._states[service.name]
                wanted = render(
                    service,
                    state.shares or {},
                    weighted=self.provider.SUPPORTS_WEIGHTS,
                    ttl=state.ttl,
                )
                changes.extend(diff(service, wanted, actual.get(service.name, ())))
                desired[service.name] = wanted
            except UnsafePlanError as exc:
                self._refused(service.name, exc)
            except Exception as exc:  # one broken service must not block the provider's others
                log.exception("plan_error service=%s", service.name)
                self._journal.error(service.name, f"cannot plan: {type(exc).__name__}: {exc}")
        return make_plan(changes, desired, read_first=read_first)

    async def _apply(
        self,
        plan: Plan,
        configs: list[ServiceConfig],
        planned: Mapping[str, Written],
    ) -> Plan | None:
        started = time.monotonic()
        if plan:
            self._last_write = self._clock.now()
        try:
            receipt = await self.provider.apply(plan)
        except (ProviderError, UnsafePlanError) as exc:
            self.status.lagging = self.provider.lagging_instances
            failed = set(exc.services) if exc.services else {s.name for s in configs}
            for name in failed:
                self._known.pop(name, None)  # what the backend holds is not known now
            # The provider applied the rest of the plan before naming these.
            done = [s for s in configs if s.name not in failed]
            self._applied(plan, done, planned, None)
            self._failed(sorted(failed), exc)
            return None
        took = time.monotonic() - started if plan else None
        self.status.lagging = self.provider.lagging_instances
        self._succeeded()
        self._applied(plan, configs, planned, receipt)
        self._listeners.provider_synced(self.name, None, took)
        return plan

    def _applied(
        self,
        plan: Plan,
        configs: list[ServiceConfig],
        planned: Mapping[str, Written],
        receipt: Receipt | None,
    ) -> None:
        now = self._clock.now()
        for service in configs:
            if service.name in plan.desired:
                self._known[service.name] = (now, tuple(plan.desired[service.name]))
            state = self._states[service.name]
            # Only the shares (and TTL) that were planned count as applied: a decision made
            # while the call was in flight is still pending, and its step hold has not started.
            exact = _written(state) == planned.get(service.name)
            changes = plan.for_service(service.name)
            if changes:
                self._journal_changes(service, state, changes, receipt, exact)
            if exact and state.applied_at is None:
                applied = replace(state, applied_at=self._clock.now())
                self._states[service.name] = applied
                # Stored too, so `status` read from the store knows when the next step is due.
                self._journal.record(service.name, [], state=applied)
                self._after_apply(service.name)
            self._last_error.pop(service.name, None)

    def _journal_changes(
        self,
        service: ServiceConfig,
        state: ServiceState,
        changes: tuple[Change, ...],
        receipt: Receipt | None,
        exact: bool,
    ) -> None:
        text = "; ".join(str(c) for c in changes)
        # Shares already applied, yet the backend differed: someone changed it.
        kind = EventKind.DRIFT if state.applied_at is not None else EventKind.PROVIDER_CHANGE
        data: dict[str, object] = {"provider": self.name}
        if receipt is not None:
            data["change_ids"] = list(receipt.change_ids)
            record = ChangeRecord(
                service.name,
                self.name,
                receipt.change_ids,
                receipt.submitted_at,
                receipt.in_sync,
                self._clock.wall() if receipt.in_sync else None,
            )
            if self._journal.writer is not None:
                self._journal.writer.record_change(record)
        self._journal.record(service.name, [Event(kind, text)], data=data)

    # -- outcomes -------------------------------------------------------------------------

    def _succeeded(self) -> None:
        status = self.status
        if not status.ok:
            log.info("provider_recovered provider=%s", self.name)
        status.ok, status.error, status.failures_in_row = True, "", 0
        status.last_success = self._clock.wall()
        self._throttled = False

    def _refused(self, name: str, exc: UnsafePlanError) -> None:
        """An unsafe change for one service: refused, journaled once, never retried soon."""
        if self._last_error.get(name) != str(exc):
            self._last_error[name] = str(exc)
            log.error("plan_refused service=%s reason=%s", name, exc)
            self._journal.record(
                name, [Event(EventKind.PROVIDER_ERROR, str(exc))], data={"provider": self.name}
            )

    def _failed(self, names: list[str], exc: Exception) -> None:
        status = self.status
        kind = exc.kind if isinstance(exc, TrafficflipError) else type(exc).__name__
        status.ok, status.error, status.error_kind = False, str(exc), kind
        status.errors += 1
        status.failures_in_row += 1
        self._listeners.provider_synced(self.name, exc, None)
        log.error(
            "provider_error provider=%s services=%s kind=%s error=%s",
            self.name,
            _listed(names),
            kind,
            exc,
        )
        for name in names:
            # A provider error repeated on every retry is journaled once per change of error.
            if self._last_error.get(name) != str(exc):
                self._last_error[name] = str(exc)
                self._journal.record(
                    name,
                    [Event(EventKind.PROVIDER_ERROR, str(exc))],
                    data={"provider": self.name},
                )
        if isinstance(exc, PermanentProviderError | UnsafePlanError):
            return  # not hammered: the reconcile interval retries it
        retry_after = exc.retry_after if isinstance(exc, TransientProviderError) else None
        delay = max(backoff_delay(status.failures_in_row, base=RETRY_BASE, cap=RETRY_CAP), 0.5)
        self._throttled = retry_after is not None
        self._retry_at = self._clock.now() + max(delay, retry_after or 0.0)
        self._pending.update(names)
        self.status.pending = len(self._pending)

    # -- confirmation ---------------------------------------------------------------------

    async def confirm(self, record: ChangeRecord) -> ChangeRecord | None:
        """The record once the backend says the change reached every server, else None."""
        receipt = Receipt(record.provider, record.change_ids, record.submitted_at, False)
        try:
            in_sync = await self.provider.confirm(receipt)
        except ProviderError as exc:
            log.warning("confirm_failed service=%s error=%s", record.service, exc)
            return None
        if not in_sync:
            return None
        lag = self._clock.wall() - record.submitted_at
        log.info(
            "in_sync %s: change %s after %.1fs", record.service, ",".join(record.change_ids), lag
        )
        return replace(record, in_sync=True, confirmed_at=self._clock.wall())


def _listed(names: list[str]) -> str:
    """``s1,s2,s3`` or, past ``LOG_NAMES``, ``s1,...,s10 and 9990 more``."""
    if len(names) <= LOG_NAMES:
        return ",".join(names)
    return f"{','.join(names[:LOG_NAMES])} and {len(names) - LOG_NAMES} more"
