"""Prometheus metrics: counters fed by engine events, gauges read from the engine at scrape.

Counts (probes, failures, failovers, provider applies) come through the engine's listener
hook as they happen; everything that is a current value (check up, share, seconds since the
last reconcile, unsynced changes, scheduler lag) is read when scraped, so it is never stale.
Labels name checks by type and address only: never a URL's credentials or query.
"""

from __future__ import annotations

import statistics
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from trafficflip.decision.model import EventKind, JournalEntry, ProbeResult
from trafficflip.errors import PermanentProviderError, TransientProviderError, UnsafePlanError
from trafficflip.operations.snapshot import Snapshot
from trafficflip.runtime.engine import Engine, EngineListener
from trafficflip.runtime.scheduler import Runner

# The ``site`` label of a failback gate's check.
GATES_LABEL = "gates"
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Each bucket's ``le`` label, written as prometheus_client writes it.
PROBE_BUCKET_LABELS = (*(repr(bound) for bound in PROBE_BUCKETS), "+Inf")
APPLY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FAILBACK_OUTCOMES = {
    EventKind.FAILBACK_STARTED: "started",
    EventKind.FAILBACK_COMPLETED: "completed",
    EventKind.FAILBACK_ABORTED: "aborted",
}
# Operator moves are counted apart from failbacks, by what they did.
PLANNED_MOVES = {
    EventKind.PLANNED_MOVE_STARTED: "planned_move_started",
    EventKind.PLANNED_MOVE_COMPLETED: "planned_move_completed",
    EventKind.DRAIN_STARTED: "drain_started",
    EventKind.DRAIN_COMPLETED: "drain_completed",
}
NOTIFY_OUTCOMES = ("sent", "failed", "dropped")
# The kinds every provider error has unless its adapter names a finer one (errors.py).
PROVIDER_ERROR_KINDS = tuple(
    cls.kind for cls in (TransientProviderError, PermanentProviderError, UnsafePlanError)
)


def reason_label(reason: str) -> str:
    """A probe failure reason with its numbers dropped where they vary ('slow 812ms > ...'),
    so the label set stays bounded."""
    for stable in ("slow", "inconclusive"):
        if reason.startswith(stable):
            return stable
    return reason


class Metrics(EngineListener):
    """The process's metrics in their own registry; listens to ``engine`` once created."""

    def __init__(self, engine: Engine, runner: Runner, targets: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.probes = ProbeTallies(engine)
        r.register(self.probes)
        self.events = Counter(
            "trafficflip_journal_events", "Journal entries by kind", ["service", "kind"], registry=r
        )
        self.failovers = Counter(
            "trafficflip_failovers", "Failovers (every member down)", ["service"], registry=r
        )
        self.failbacks = Counter(
            "trafficflip_failbacks", "Failbacks by outcome", ["service", "outcome"], registry=r
        )
        self.operator_moves = Counter(
            "trafficflip_operator_moves",
            "Planned moves and drains by what happened (not failbacks)",
            ["service", "event"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "trafficflip_provider_apply_duration_seconds",
            "Duration of non-empty provider applies, retries included",
            ["provider"],
            buckets=APPLY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "trafficflip_provider_errors",
            "Failed reconciles by kind",
            ["provider", "kind"],
            registry=r,
        )
        self.notifications = Counter(
            "trafficflip_notifications",
            "Webhook notifications by outcome (sent, failed, dropped)",
            ["target", "outcome"],
            registry=r,
        )
        self.state = StateCollector(engine, runner)
        r.register(self.state)
        self._zero(engine, targets)
        engine.listeners.append(self)

    def _zero(self, engine: Engine, targets: Sequence[str]) -> None:
        """Every known label set at 0 from the start: a series that appears only with its
        first event leaves a dashboard's rate() panels at "no data" on a quiet instance."""
        for service in engine.services:
            self._zero_service(service)
        for provider in engine.providers:
            for kind in PROVIDER_ERROR_KINDS:
                self.provider_errors.labels(provider, kind)
        for target in targets:
            for outcome in NOTIFY_OUTCOMES:
                self.notifications.labels(target, outcome)

    def _zero_service(self, service: str) -> None:
        self.failovers.labels(service)
        for outcome in FAILBACK_OUTCOMES.values():
            self.failbacks.labels(service, outcome)
        for event in PLANNED_MOVES.values():
            self.operator_moves.labels(service, event)

    def read_from(self, snapshot: Callable[[], Snapshot]) -> None:
        """Take per-service values from ``snapshot()`` (the API's snapshot keeper)."""
        self.state.snapshot = snapshot

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def notified(self, target: str, outcome: str) -> None:
        self.notifications.labels(target, outcome).inc()

    # -- EngineListener ---------------------------------------------------------------------

    def probed(self, key: str, result: ProbeResult) -> None:
        self.probes.count(key, result)

    def journaled(self, entries: Sequence[JournalEntry]) -> None:
        for entry in entries:
            self.events.labels(entry.service, entry.kind).inc()
            if entry.kind == EventKind.SERVICE_ADDED:  # by a reload
                self._zero_service(entry.service)
            elif entry.kind == EventKind.FAILOVER:
                self.failovers.labels(entry.service).inc()
            elif entry.kind in FAILBACK_OUTCOMES:
                self.failbacks.labels(entry.service, FAILBACK_OUTCOMES[EventKind(entry.kind)]).inc()
            elif entry.kind in PLANNED_MOVES:
                self.operator_moves.labels(
                    entry.service, PLANNED_MOVES[EventKind(entry.kind)]
                ).inc()

    def provider_synced(
        self, provider: str, error: Exception | None, apply_seconds: float | None
    ) -> None:
        if apply_seconds is not None:
            self.apply_seconds.labels(provider).observe(apply_seconds)
        if error is not None:
            kind = str(getattr(error, "kind", "") or type(error).__name__)
            self.provider_errors.labels(provider, kind).inc()


class _Latencies:
    """One check's probe latencies: a count per ``PROBE_BUCKETS`` bucket (and +Inf), a sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(PROBE_BUCKETS) + 1)
        self.total = 0.0


class ProbeTallies(Collector):
    """Probe latencies and failures per check, counted in plain integers on the hottest path
    (every probe) and made Prometheus families only when scraped. prometheus_client's
    ``Histogram.observe`` takes a lock for the sum and for the bucket on every call; at
    1,000 probes/s that was 3 to 4 % of a core (docs/performance.md).

    Counting runs in the event loop; ``/metrics`` is rendered in a thread, which copies the
    dicts and each check's bucket list (one step each under the GIL) before reading them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._by_key: dict[str, tuple[str, _Latencies]] = {}
        # Identical checks (same type and address) share a label, and so their counts.
        self._by_label: dict[str, _Latencies] = {}
        self._failures: dict[tuple[str, str], int] = {}

    def count(self, key: str, result: ProbeResult) -> None:
        entry = self._by_key.get(key)
        if entry is None:
            job = self._engine.jobs.get(key)
            if job is None:
                return  # the probe of a check that a reload removed meanwhile
            latencies = self._by_label.setdefault(job.label, _Latencies())
            entry = self._by_key[key] = (job.label, latencies)
        label, latencies = entry
        latencies.buckets[bisect_left(PROBE_BUCKETS, result.latency)] += 1
        latencies.total += result.latency
        if not result.ok:
            failure = (label, reason_label(result.reason))
            self._failures[failure] = self._failures.get(failure, 0) + 1

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        seconds = HistogramMetricFamily(
            "trafficflip_probe_duration_seconds", "Probe latency", labels=["check"]
        )
        for label, latencies in list(self._by_label.items()):
            counts, cumulative, buckets = list(latencies.buckets), 0, []
            for bound, count in zip(PROBE_BUCKET_LABELS, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            seconds.add_metric([label], buckets, latencies.total)
        yield seconds
        failures = CounterMetricFamily(
            "trafficflip_probe_failures", "Failed probes by reason", labels=["check", "reason"]
        )
        for (label, reason), count in list(self._failures.items()):
            failures.add_metric([label, reason], count)
        yield failures


class StateCollector(Collector):
    """Current values on every scrape: per service from the current snapshot (never the
    engine's dicts or the store, so a scrape may run off the event loop), per provider and
    for the scheduler from their own small counters."""

    def __init__(self, engine: Engine, runner: Runner) -> None:
        self.engine = engine
        self.runner = runner
        self.started = time.time()
        self.snapshot: Callable[[], Snapshot] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.snapshot is not None:
            yield from self._services(self.snapshot())
        yield from self._providers()
        yield from self._scheduler()
        yield from self._store()

    def _store(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        writer = self.engine.writer
        if writer is None:
            return
        health = writer.health
        yield CounterMetricFamily(
            "trafficflip_store_errors", "Failed writes to the state store", value=health.failures
        )
        up = _gauge("store_up", "1 while the state store takes writes", [])
        up.add_metric([], health.ok)
        queued = _gauge("store_queued_writes", "Writes kept in memory for the store", [])
        queued.add_metric([], health.queued)
        yield from (up, queued)

    def _services(self, snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
        check_up = _gauge("check_up", "1 if the check is up", ["service", "site", "check"])
        site_up = _gauge("site_up", "1 if the site is up", ["service", "site"])
        share = _gauge("site_share_percent", "Desired share of the answers", ["service", "site"])
        held = _gauge("service_held", "1 while automatic changes are frozen", ["service"])
        step = _gauge("ramp_step", "Current ramp step (1-based), 0 without a ramp", ["service"])
        phase = _gauge("service_phase", "1 for the service's current phase", ["service", "phase"])
        age = _gauge("unsynced_change_age_seconds", "Age of the unconfirmed change", ["service"])
        unsynced = 0
        for view in snapshot.services:
            name = view.name
            for site in view.sites:
                site_up.add_metric([name, site.name], site.status == "up")
                share.add_metric([name, site.name], site.share)
                for check in site.checks:
                    check_up.add_metric([name, site.name, check.check], check.status == "up")
            for check in view.gates:
                check_up.add_metric([name, GATES_LABEL, check.check], check.status == "up")
            held.add_metric([name], view.held)
            step.add_metric([name], 0 if view.ramp is None else view.ramp.step)
            phase.add_metric([name, view.phase], 1)
            change = view.last_change
            if change is not None and not change.in_sync:
                unsynced += 1
                age.add_metric([name], snapshot.built_at - change.submitted_at)
        count = _gauge("unsynced_changes", "Provider changes not yet confirmed in sync", [])
        count.add_metric([], unsynced)
        last = _gauge("last_failover_timestamp_seconds", "When the last failover happened", [])
        if snapshot.summary.last_failover is not None:
            last.add_metric([], snapshot.summary.last_failover)
        built = _gauge("snapshot_timestamp_seconds", "When the values above were read", [])
        built.add_metric([], snapshot.built_at)
        yield from (check_up, site_up, share, held, step, phase, age, count, last, built)

    def _providers(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        up = _gauge("provider_up", "1 if the provider's last reconcile succeeded", ["provider"])
        since = _gauge(
            "seconds_since_last_reconcile",
            "Seconds since the provider last answered a reconcile (since start if never)",
            ["provider"],
        )
        for name, status in list(self.engine.provider_status.items()):
            up.add_metric([name], status.ok)
            since.add_metric([name], now - (status.last_success or self.started))
        # Alert rules compare the time since the last reconcile with this interval.
        interval = _gauge("reconcile_interval_seconds", "Configured reconcile interval", [])
        interval.add_metric([], self.runner.reconcile_interval)
        yield from (up, since, interval)

    def _scheduler(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.runner.stats
        lag = _gauge("scheduler_lag_seconds", "Job start lag over recent runs", ["quantile"])
        samples = sorted(stats.lags)
        if samples:
            lag.add_metric(["0.5"], statistics.median(samples))
            lag.add_metric(["0.99"], samples[min(len(samples) - 1, int(len(samples) * 0.99))])
            lag.add_metric(["1"], samples[-1])
        yield lag
        for name, value, text in (
            ("scheduler_runs", stats.runs, "Jobs started"),
            ("scheduler_missed_runs", stats.missed, "Runs skipped: the loop was late past a grace"),
            ("scheduler_overruns", stats.overrun, "Runs skipped: the previous still going"),
            ("scheduler_job_errors", stats.errors, "Jobs that raised"),
            ("probe_worker_restarts", stats.worker_restarts, "Probe worker processes restarted"),
        ):
            yield CounterMetricFamily(f"trafficflip_{name}", text, value=value)


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"trafficflip_{name}", text, labels=labels)
