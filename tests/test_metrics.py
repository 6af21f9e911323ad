"""Metrics: a running service's /metrics after a failover and a failback; provider errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import PRIMARY_TARGET, service, site
from tests.service import PRIMARY, STANDBY, Service
from tests.support import MotoServer, wait_until
from tests.test_engine import Rig, config
from trafficflip.decision.model import ProbeResult
from trafficflip.errors import PermanentProviderError
from trafficflip.operations.metrics import Metrics, reason_label
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import Runner

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_after_a_failover_and_failback(tmp_path: Path, moto_server: MotoServer) -> None:
    service = Service(tmp_path, moto_server)
    try:
        service.start()
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")
        service.primary.stop()
        wait_until(lambda: service.weights() == STANDBY, timeout=5, what="failover")
        # Per-service values come from the snapshot, rebuilt soon after a change.
        www_dr = 'trafficflip_site_share_percent{service="www",site="dr"} 100.0'
        wait_until(lambda: www_dr in service.get("/metrics").text, timeout=5, what="dr at 100")
        response = service.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        m = parse(response.text)
        check = f"http {service.primary.url}"
        www = {"service": "www"}
        assert value(m, "trafficflip_failovers_total", **www) == 1
        assert value(m, "trafficflip_site_share_percent", **www, site="dr") == 100
        assert value(m, "trafficflip_site_share_percent", **www, site="primary") == 0
        assert value(m, "trafficflip_site_up", **www, site="primary") == 0
        assert value(m, "trafficflip_check_up", **www, site="primary", check=check) == 0
        assert (
            value(m, "trafficflip_check_up", **www, site="dr", check=f"http {service.dr.url}") == 1
        )
        failures = sum(
            v
            for (name, labels), v in m.items()
            if name == "trafficflip_probe_failures_total" and ("check", check) in labels
        )
        assert failures >= 2  # fall
        assert value(m, "trafficflip_probe_failures_total", check=check, reason="connect refused")
        assert value(m, "trafficflip_probe_duration_seconds_count", check=check) > failures
        assert value(m, "trafficflip_provider_apply_duration_seconds_count", provider="aws") >= 2
        assert value(m, "trafficflip_provider_up", provider="aws") == 1
        assert value(m, "trafficflip_seconds_since_last_reconcile", provider="aws") < 5
        assert value(m, "trafficflip_unsynced_changes") >= 0
        assert value(m, "trafficflip_scheduler_lag_seconds", quantile="0.5") < 0.5
        assert value(m, "trafficflip_scheduler_runs_total") > 0
        assert value(m, "trafficflip_scheduler_missed_runs_total") == 0
        assert value(m, "trafficflip_service_held", **www) == 0
        assert value(m, "trafficflip_service_phase", **www, phase="failed over") == 1
        assert value(m, "trafficflip_last_failover_timestamp_seconds") > 0
        service.primary.start()
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="failback")
        m = parse(service.get("/metrics").text)
        assert value(m, "trafficflip_failbacks_total", **www, outcome="started") == 1
        assert value(m, "trafficflip_failbacks_total", **www, outcome="completed") == 1
        assert value(m, "trafficflip_journal_events_total", **www, kind="failover") == 1
        wait_until(
            lambda: parse(service.get("/metrics").text).get(
                (
                    "trafficflip_notifications_total",
                    frozenset({"target": "generic", "outcome": "sent"}.items()),
                )
            ),
            timeout=5,
            what="notifications counted",
        )
    finally:
        service.close()


async def test_provider_errors_by_kind_and_provider_up() -> None:
    rig = Rig()
    prober = Prober()
    metrics = Metrics(rig.engine, Runner(rig.engine, prober, reconcile_interval=30))
    rig.provider.fail = lambda: PermanentProviderError("access denied", kind="AccessDenied")
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.engine.reconcile()
    await rig.engine.reconcile()
    m = parse(metrics.exposition()[0].decode())
    assert value(m, "trafficflip_provider_errors_total", provider="mem", kind="AccessDenied") == 2
    assert value(m, "trafficflip_provider_up", provider="mem") == 0
    assert (
        "trafficflip_provider_apply_duration_seconds_count",
        frozenset({("provider", "mem")}),
    ) not in m
    await prober.close()


async def test_probes_are_counted_per_check_in_latency_buckets_and_by_reason() -> None:
    rig = Rig()
    prober = Prober()
    metrics = Metrics(rig.engine, Runner(rig.engine, prober, reconcile_interval=30))
    primary = next(key for key in rig.engine.jobs if "127.0.0.1:1" in key)
    label = rig.engine.jobs[primary].label
    for latency in (0.005, 0.3, 7.0):  # on a bound, inside one, beyond the last
        rig.engine.observe(primary, ProbeResult(True, "ok", latency, rig.now))
    rig.engine.observe(primary, ProbeResult(False, "slow 812ms > 500ms", 0.812, rig.now))
    rig.engine.observe(primary, ProbeResult(False, "slow 900ms > 500ms", 0.9, rig.now))
    rig.engine.observe("a check a reload removed", ProbeResult(True, "ok", 0.1, rig.now))
    m = parse(metrics.exposition()[0].decode())
    buckets = "trafficflip_probe_duration_seconds_bucket"
    assert value(m, buckets, check=label, le="0.005") == 1
    assert value(m, buckets, check=label, le="0.25") == 1
    assert value(m, buckets, check=label, le="0.5") == 2
    assert value(m, buckets, check=label, le="1.0") == 4
    assert value(m, buckets, check=label, le="+Inf") == 5
    assert value(m, "trafficflip_probe_duration_seconds_count", check=label) == 5
    assert round(value(m, "trafficflip_probe_duration_seconds_sum", check=label), 3) == 9.017
    assert value(m, "trafficflip_probe_failures_total", check=label, reason="slow") == 2
    await prober.close()


async def test_a_check_added_by_a_reload_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    prober = Prober()
    metrics = Metrics(rig.engine, Runner(rig.engine, prober, reconcile_interval=30))
    added_site = site("primary", PRIMARY_TARGET, 7)
    bigger = [*config().services, service("s1", provider="mem", sites=[added_site])]
    rig.engine.reload(bigger, {"mem": rig.provider})
    added = next(key for key in rig.engine.jobs if "127.0.0.1:7" in key)
    rig.engine.observe(added, ProbeResult(False, "connect refused", 0.001, rig.now))
    m = parse(metrics.exposition()[0].decode())
    label = rig.engine.jobs[added].label
    assert value(m, "trafficflip_probe_failures_total", check=label, reason="connect refused")
    assert "listener_error" not in caplog.text
    await prober.close()


def test_reason_labels_stay_bounded() -> None:
    assert reason_label("slow 812ms > 500ms") == "slow"
    assert reason_label("inconclusive: prober overloaded (loop lag 300ms)") == "inconclusive"
    assert reason_label("status 503") == "status 503"


async def test_an_operator_move_is_counted_as_a_move_not_a_failback() -> None:
    rig = Rig()
    prober = Prober()
    metrics = Metrics(rig.engine, Runner(rig.engine, prober, reconcile_interval=30))
    rig.probe("primary", True), rig.probe("dr", True)
    await rig.settle()
    assert rig.engine.execute("www", "failover", {"to": "dr"}, "test").ok
    await rig.settle()
    rig.now += 1.0  # the step's hold (1 s)
    await rig.tick()
    assert rig.provider.weights("www") == {"primary": 0, "dr": 100}
    m = parse(metrics.exposition()[0].decode())
    moves = "trafficflip_operator_moves_total"
    assert value(m, moves, service="www", event="planned_move_started") == 1
    assert value(m, moves, service="www", event="planned_move_completed") == 1
    assert not [v for k, v in m.items() if k[0] == "trafficflip_failbacks_total" and v]
    await prober.close()


async def test_dashboard_counters_exist_from_the_start() -> None:
    """At 0 for every known label set, so rate() panels show 0, not "no data" (issue 18)."""
    rig = Rig()
    prober = Prober()
    runner = Runner(rig.engine, prober, reconcile_interval=30)
    m = parse(Metrics(rig.engine, runner, ["ops"]).exposition()[0].decode())
    for outcome in ("started", "completed", "aborted"):
        assert value(m, "trafficflip_failbacks_total", service="www", outcome=outcome) == 0
    for event in ("planned_move_started", "drain_started", "drain_completed"):
        assert value(m, "trafficflip_operator_moves_total", service="www", event=event) == 0
    for outcome in ("sent", "failed", "dropped"):
        assert value(m, "trafficflip_notifications_total", target="ops", outcome=outcome) == 0
    for kind in ("transient", "permanent", "unsafe"):
        assert value(m, "trafficflip_provider_errors_total", provider="mem", kind=kind) == 0
    assert value(m, "trafficflip_failovers_total", service="www") == 0
    await prober.close()
