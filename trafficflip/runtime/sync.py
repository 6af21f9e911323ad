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
import random
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
# Backoff of a write that moves no traffic off a dead site (a ramp step, a TTL restore, a
# reconcile): it can wait, and a backend in trouble is not hammered.
RETRY_BASE, RETRY_CAP = 1.0, 30.0
# An urgent write (a failover) is retried after half of Provider.URGENT_RETRY_SPACING to all
# of it, jittered, for as long as it fails: a failover is worth less with every second it waits,
# and the provider's call budget already keeps the calls within what the backend allows.
# A backend's own retry-after is honoured up to this; past it, a failover goes anyway.
URGENT_RETRY_AFTER_CAP = 2.0
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
        rng: random.Random | None = None,
        predecessor: ProviderSync | None = None,
    ) -> None:
        """``predecessor`` is the sync this one replaces (a reload): its call in flight
        ends before this one's first call starts, so an older write never lands after a
        newer one."""
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
        # Services whose failover is pending: they stay urgent until a write of theirs lands.
        self._urgent_names: set[str] = set()
        # Service -> (when, answers) last read from or written to the backend.
        self._known: dict[str, tuple[float, tuple[Answer, ...]]] = {}
        self._last_write: float | None = None
        self._urgent = asyncio.Event()
        # Set while no call is in flight or about to start (a retry's wait counts as quiet).
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._worker: asyncio.Task[None] | None = None
        # After a transient failure: when the retry is due, and when it is due at the latest
        # should a failover be pending (monotonic). None when no retry waits.
        self._retry_at: float | None = None
        self._urgent_retry_at: float | None = None
        self._rng = rng or random.Random()
        self._last_error: dict[str, str] = {}
        self._last_logged = ""
        self._predecessor = predecessor
        self._closed = False
        self._in_call = False

    # -- asking --------------------------------------------------------------------------

    def request(self, names: Iterable[str], *, urgent: bool = False) -> None:
        """Sync these services soon; ``urgent`` (a failover) cuts a backoff wait short: it
        waits at most the urgent retry schedule (see ``URGENT_RETRY_AFTER_CAP``)."""
        if self._closed:
            return
        names = set(names)
        self._pending.update(names)
        self.status.pending = len(self._pending)
        if urgent:
            self._urgent_names.update(names)
            self._urgent.set()
        if self._retry_at is None:
            self._quiet.clear()  # a call is coming; ``idle`` waits for it
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def retry_at(self) -> float | None:
        """When the next attempt after a transient failure is due (monotonic), if any."""
        if self._retry_at is not None and self._urgent_names & self._pending:
            return self._urgent_retry_at
        return self._retry_at

    def drop_pending(self) -> None:
        """Forget every pending service and retry wait, and stop the worker (cluster mode:
        this instance stopped leading, and a retry of its term must never be sent). The
        sync stays usable: a request after a re-election starts a new worker."""
        self._forget()
        if self._worker is not None:
            self._worker.cancel()
        self._quiet.set()

    def _forget(self) -> None:
        self._pending.clear()
        self._urgent_names.clear()
        self._retry_at = self._urgent_retry_at = None
        self.status.pending = 0

    async def idle(self) -> None:
        """Return once no call is in flight or about to start, and nothing is pending but
        a retry's wait."""
        await self._quiet.wait()

    def close(self) -> None:
        """Stop now (shutdown, a crash, demotion): the call in flight is cancelled."""
        self.retire()
        if self._worker is not None:
            self._worker.cancel()

    def retire(self) -> None:
        """Take no more work (a reload replaced this sync): a call in flight finishes and
        is journaled, and the successor's first call waits for it; a wait is cut short."""
        self._closed = True
        self._forget()
        if self._worker is not None and not self._in_call:
            self._worker.cancel()
        self._quiet.set()

    async def _after_predecessor(self) -> None:
        predecessor, self._predecessor = self._predecessor, None
        worker = predecessor._worker if predecessor is not None else None
        if worker is not None and not worker.done():
            await asyncio.wait({worker})

    async def _work(self) -> None:
        try:
            await self._after_predecessor()
            while self._pending and not self._closed:
                await self._one_call()
        finally:
            self._quiet.set()

    async def _one_call(self) -> None:
        """Wait for a due retry (idle meanwhile) or the spacing, then one read-plan-apply
        of everything pending."""
        if self._retry_at is not None:
            self._quiet.set()
            await self._wait_for_retry()
            self._quiet.clear()
        else:
            # A retry keeps its own schedule; spacing gathers fresh decisions.
            await self._wait_for_spacing()
        batch, self._pending = self._pending, set()
        self.status.pending = 0
        if not batch or self._closed:
            return
        urgent = bool(batch & self._urgent_names)
        self._in_call = True
        try:
            await self.sync(batch, urgent=urgent)
        except Exception as exc:  # never lose the worker: what was pending is retried
            log.exception("sync_error provider=%s", self.name)
            self._failed(sorted(batch), exc)
        finally:
            self._in_call = False

    async def _wait_for_retry(self) -> None:
        """Wait out a pending retry's delay (shorter once a failover is pending)."""
        while (due := self.retry_at) is not None:
            delay = due - self._clock.now()
            if delay <= 0:
                break
            self._urgent.clear()
            if await self._timed_out(delay):
                break
        self._retry_at = self._urgent_retry_at = None
        self._urgent.clear()

    async def _timed_out(self, delay: float) -> bool:
        """Wait ``delay`` or until a failover is asked for; True when the time ran out.

        Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that meets
        the event being set, and a sync that cannot be stopped keeps writing."""
        timer = asyncio.get_running_loop().call_later(delay, self._urgent.set)
        try:
            await self._urgent.wait()
        finally:
            timer.cancel()
        return timer.when() <= asyncio.get_running_loop().time()

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
                written = planned.get(service.name, (None, None))[0]
                self._journal_changes(service, state, changes, receipt, exact, written)
            if exact:  # its newest decision is written: no longer urgent
                self._urgent_names.discard(service.name)
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
        written: Mapping[str, int] | None,
    ) -> None:
        text = "; ".join(str(c) for c in changes)
        # Shares already applied, yet the backend differed: someone changed it.
        kind = EventKind.DRIFT if state.applied_at is not None else EventKind.PROVIDER_CHANGE
        data: dict[str, object] = {"provider": self.name}
        if written is not None:  # the shares this write put in place, site by site
            data["written"] = {c.site: written.get(c.site or "", 0) for c in changes if c.site}
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
        self._last_logged = ""

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
        # Logged at ERROR once per change of error, as the journal does; every repeat is
        # counted (metrics, status) and logged at DEBUG.
        repeated = self._last_logged == f"{kind}: {exc}"
        self._last_logged = f"{kind}: {exc}"
        log.log(
            logging.DEBUG if repeated else logging.ERROR,
            "provider_error provider=%s services=%s kind=%s error=%s%s",
            self.name,
            _listed(names),
            kind,
            exc,
            f" (failed {status.failures_in_row} times in a row)" if repeated else "",
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
        now = self._clock.now()
        delay = max(
            backoff_delay(status.failures_in_row, base=RETRY_BASE, cap=RETRY_CAP, rng=self._rng),
            0.5,
        )
        self._retry_at = now + max(delay, retry_after or 0.0)
        self._urgent_retry_at = now + self._urgent_delay(retry_after)
        self._pending.update(names)
        self.status.pending = len(self._pending)

    def _urgent_delay(self, retry_after: float | None) -> float:
        """The wait before retrying a failover: the provider's spacing, jittered so that
        several instances or processes sharing an account do not retry together."""
        spacing = self.provider.URGENT_RETRY_SPACING
        delay = self._rng.uniform(spacing / 2, spacing)
        return max(delay, min(retry_after or 0.0, URGENT_RETRY_AFTER_CAP))

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
