"""A read-only picture of every service, rebuilt off the request path.

The API, the page and the metrics' readers render the current ``Snapshot``; none of them
walks the engine or queries the store per request. The ``SnapshotKeeper`` listens to the
engine and rebuilds when something changed: soon after a journal entry or a provider sync,
at a slower pace when only probe results moved. A rebuild works in slices of
``SLICE_SERVICES`` and yields to the event loop between them, so probes and decisions never
wait behind it for more than a few milliseconds, whatever the number of services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from trafficflip.decision.model import EventKind, JournalEntry, ProbeResult, Status
from trafficflip.errors import TrafficflipError
from trafficflip.operations.status import Summary, severity, summarize
from trafficflip.operations.views import (
    JOURNAL_KEEP,
    JournalView,
    ServiceView,
    journal_view,
    service_view,
)
from trafficflip.runtime.engine import Engine, EngineListener

log = logging.getLogger("trafficflip.operations.snapshot")
# About 0.2-1 ms per service on a loaded 2-core machine (bench/operator_snapshot.py).
SLICE_SERVICES = 5
# A journal entry, a provider sync or a check changing status is shown within URGENT
# seconds; probe results that change nothing but latencies within STALE. Both bound how
# often a rebuild may run, not only how soon.
URGENT, STALE = 0.25, 5.0
# A large fleet's rebuild takes long (more than a second at 5,000 services): the spacing grows
# with it, so rebuilds use at most about a tenth of a core for probe results and a third
# while journal entries keep coming (a mass failover), never the event loop's whole time.
STALE_PER_BUILD, URGENT_PER_BUILD = 10.0, 2.0


@dataclass(frozen=True)
class Snapshot:
    """Every service's view (config order), the fleet summary, and when it was built."""

    built_at: float
    services: tuple[ServiceView, ...]
    summary: Summary
    _by_name: dict[str, ServiceView] = field(default_factory=dict, repr=False)
    _json: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update((v.name, v) for v in self.services)

    def view(self, name: str, journal: int) -> ServiceView | None:
        found = self._by_name.get(name)
        return None if found is None else _with_journal(found, journal)

    def views(self, journal: int) -> list[ServiceView]:
        return [_with_journal(v, journal) for v in self.services]

    def worst_first(self) -> list[ServiceView]:
        """Services that are not normal first (worst first), then the rest in config order."""
        return sorted(self.services, key=lambda v: severity(v.phase))

    def services_json(self, journal: int) -> bytes:
        """``/api/v1/services`` as JSON, serialized once per snapshot and page size."""
        cached = self._json.get(journal)
        if cached is None:
            parts = [v.model_dump_json() for v in self.views(journal)]
            cached = self._json[journal] = ("[" + ",".join(parts) + "]").encode()
        return cached

    def summary_json(self) -> dict[str, object]:
        s = self.summary
        return {
            "built_at": self.built_at,
            "services": s.services,
            "phases": s.phases,
            "checks_down": s.checks_down,
            "last_failover": s.last_failover,
            "line": s.line(),
        }


def _with_journal(view: ServiceView, journal: int) -> ServiceView:
    if len(view.journal) <= journal:
        return view
    return view.model_copy(update={"journal": view.journal[len(view.journal) - journal :]})


class SnapshotKeeper(EngineListener):
    """Keeps ``current`` fresh; a ``Runner`` component and an engine listener."""

    def __init__(self, engine: Engine, *, urgent: float = URGENT, stale: float = STALE) -> None:
        self.engine = engine
        self.urgent, self.stale = urgent, stale
        self._journals: dict[str, deque[JournalView]] = {
            name: deque(maxlen=JOURNAL_KEEP) for name in engine.services
        }
        self._last_failover: float | None = None
        self._statuses: dict[str, Status] = {}
        self._changed = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reseed = False
        self.builds = 0
        self.build_seconds = 0.0  # the last rebuild's own time, its yields left out
        self.current = self.build_now()
        engine.listeners.append(self)

    # -- EngineListener ---------------------------------------------------------------------

    def probed(self, key: str, result: ProbeResult) -> None:
        # The hook runs before the result is folded in: the status seen now reflects the
        # previous probe, so a check that changed status is shown one interval later.
        status = self.engine.checks[key].status
        if self._statuses.get(key) != status:
            self._statuses[key] = status
            self._urgent.set()
        self._changed.set()

    def journaled(self, entries: Sequence[JournalEntry]) -> None:
        for entry in entries:
            self._remember(entry)
        self._urgent.set()
        self._changed.set()

    def provider_synced(
        self, provider: str, error: Exception | None, apply_seconds: float | None
    ) -> None:
        self._urgent.set()
        self._changed.set()

    def followed(self, entries: Sequence[JournalEntry]) -> None:
        # A follower shows the leader's history; what the seed at start read already is not
        # shown twice (the follow starts from a revision read before the seed).
        for entry in entries:
            journal = self._journals.get(entry.service)
            if journal and journal[-1].at >= entry.at:
                continue
            self._remember(entry)
        self._urgent.set()
        self._changed.set()

    def took_over(self) -> None:
        # The previous leader journaled into the shared store: read it before the next build.
        self._reseed = True
        self._urgent.set()
        self._changed.set()

    # -- building ---------------------------------------------------------------------------

    def _remember(self, entry: JournalEntry) -> None:
        # setdefault: a service added by a reload has no journal here yet.
        journal = self._journals.setdefault(entry.service, deque(maxlen=JOURNAL_KEEP))
        journal.append(journal_view(entry))  # converted once, not at every rebuild
        if entry.kind == EventKind.FAILOVER:
            self._last_failover = max(entry.at, self._last_failover or entry.at)

    def seed(self) -> None:
        """Load each service's recent journal from the store (at start)."""
        self._take(self._stored_journals())

    def _stored_journals(self) -> dict[str, list[JournalEntry]]:
        return {
            name: self.engine.store.journal(name, limit=JOURNAL_KEEP) for name in self._journals
        }

    def _take(self, stored: dict[str, list[JournalEntry]]) -> None:
        """Replace each service's history with ``stored``, keeping entries journaled here
        since that were not in the store yet (the writer is behind by a batch)."""
        for name, entries in stored.items():
            journal = self._journals.setdefault(name, deque(maxlen=JOURNAL_KEEP))
            newest = max((e.at for e in entries), default=float("-inf"))
            recent = [v for v in journal if v.at > newest]
            journal.clear()
            for entry in entries:
                self._remember(entry)
            journal.extend(recent)

    async def reseed(self) -> None:
        """Read every journal from the store again, off the event loop (a new leader)."""
        self._reseed = False
        self._take(await asyncio.to_thread(self._stored_journals))

    def view(self, name: str) -> ServiceView:
        """One service's view built now (after an operator command, which must see it)."""
        journal = list(self._journals.get(name, ()))
        return service_view(self.engine, name, journal, self.engine.store.last_change(name))

    def refresh(self, name: str) -> ServiceView:
        """Rebuild one service's view into the current snapshot now, so an operator's
        command is visible to the next read (read-your-writes)."""
        try:
            fresh = self.view(name)
        except TrafficflipError as exc:
            # The command was taken; only the store could not say what was last written to
            # the provider (etcd slow or away): that part waits for the next rebuild.
            log.warning("snapshot_refresh_partial service=%s error=%s", name, exc)
            journal = list(self._journals.get(name, ()))
            fresh = service_view(self.engine, name, journal, None)
        views = [fresh if v.name == name else v for v in self.current.services]
        self.current = self._finish(views)
        return fresh

    def build_now(self) -> Snapshot:
        """A whole snapshot in one go (start-up and tests); the loop uses ``rebuild``."""
        views = [self.view(name) for name in self.engine.services]
        return self._finish(views)

    async def rebuild(self) -> Snapshot:
        """Build a snapshot in slices, yielding to the loop between them."""
        views: list[ServiceView] = []
        names = list(self.engine.services)
        took = 0.0
        for start in range(0, len(names), SLICE_SERVICES):
            began = time.perf_counter()
            views.extend(self.view(n) for n in names[start : start + SLICE_SERVICES])
            took += time.perf_counter() - began
            await asyncio.sleep(0)
        self.current = self._finish(views)
        self.build_seconds = took
        return self.current

    def _finish(self, views: list[ServiceView]) -> Snapshot:
        down = sum(1 for h in self.engine.checks.values() if h.status is Status.DOWN)
        summary = summarize((v.phase for v in views), down, self._last_failover)
        self.builds += 1
        return Snapshot(self.engine.clock.wall(), tuple(views), summary)

    def waits(self) -> tuple[float, float]:
        """How long the next rebuild waits after a journal entry, and after probe results
        alone: ``urgent`` and ``stale``, longer when the last rebuild took long."""
        return (
            max(self.urgent, URGENT_PER_BUILD * self.build_seconds),
            max(self.stale, STALE_PER_BUILD * self.build_seconds),
        )

    # -- component --------------------------------------------------------------------------

    async def start(self) -> None:
        self.seed()
        self.current = await self.rebuild()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            # Probe results alone wait up to ``stale``; a journal entry cuts that short.
            urgent, stale = self.waits()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), stale)
            # Changes arriving together (a mass failover) are folded into one rebuild.
            await asyncio.sleep(urgent)
            self._changed.clear()
            self._urgent.clear()
            try:
                if self._reseed:
                    await self.reseed()
                await self.rebuild()
            except Exception:  # a failed rebuild keeps the last snapshot; the next may work
                log.exception("snapshot_error: keeping the previous snapshot")
