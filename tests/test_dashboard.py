"""The Grafana dashboard in deploy/grafana queries only metrics a running trafficflip exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.service import PRIMARY, STANDBY, Service
from tests.support import MotoServer, wait_until

DASHBOARD = (
    Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "trafficflip-dashboard.json"
)
# Series a histogram or counter family exposes beside its own name.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
# Exported by cluster mode only (trafficflip/cluster); none of the dashboard's panels.
CLUSTER_ONLY = {"trafficflip_cluster_leader"}


def queried(dashboard: dict[str, object]) -> set[str]:
    """Every trafficflip metric name in the dashboard's queries, variables and annotations."""
    text = json.dumps(dashboard)
    return set(re.findall(r"\btrafficflip_[a-z0-9_]+", text)) - {"trafficflip_"}


def family(name: str, exported: set[str]) -> str | None:
    if name in exported:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in exported:
            return name.removesuffix(suffix)
    return None


def test_every_queried_metric_is_exported(tmp_path: Path, moto_server: MotoServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = queried(dashboard)
    assert len(names) >= 20, names
    service = Service(tmp_path, moto_server)
    try:
        service.start()
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")
        service.primary.stop()
        wait_until(lambda: service.weights() == STANDBY, timeout=5, what="failover")
        text = service.get("/metrics").text
    finally:
        service.close()
    exported = {f.name for f in text_string_to_metric_families(text)}
    missing = sorted(n for n in names - CLUSTER_ONLY if family(n, exported) is None)
    assert not missing, f"queried by the dashboard, not exported: {missing}"


def test_panels_have_queries_and_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
