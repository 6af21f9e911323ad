"""What the cluster shows: ``GET /api/v1/cluster``, its metrics, and the snapshot both read.

The snapshot is built from the node's last exchange with etcd (never a call to etcd), so a
scrape or a status request never waits on etcd, even while it has no quorum.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trafficflip.cluster.node import ClusterNode
from trafficflip.decision.model import Status
from trafficflip.operations.api import readers


def snapshot(node: ClusterNode) -> dict[str, Any]:
    """The cluster as this instance sees it: leader, members, every check's votes."""
    now = time.time()
    members = [
        {
            "name": m.name,
            "last_seen": m.seen_at,
            "fresh": now - m.seen_at <= node.window,
            "isolated": m.name in node.isolated,
            "leader": m.name == node.election.leader,
        }
        for m in node.members
    ]
    votes = [
        {
            "check": node.local.jobs[key].label,
            "status": node.votes[check].status.value if check in node.votes else "unknown",
            "needed": node.votes[check].needed if check in node.votes else None,
            "votes": {
                name: status.value
                for name, status in (node.votes[check].votes if check in node.votes else {}).items()
            },
            "local": node.local.checks[key].status.value,
            "age": node.votes[check].age if check in node.votes else None,
        }
        for key, check in node.ids.items()
    ]
    return {
        "name": node.name,
        "leader": node.election.leader,
        "leading": node.leading(),
        "quorum": node.cluster.quorum,
        "etcd": {"ok": node.election.etcd_ok, "error": node.election.error},
        "members": members,
        "votes": votes,
        "fencing_refusals": node.counters.fencing_refusals + node.store.refusals,
        "malformed_entries": node.counters.malformed,
        "loop_restarts": node.counters.loop_restarts,
        "not_ready": node.not_ready_reasons(),
    }


def cluster_routes(app: FastAPI, node: ClusterNode) -> None:
    """Add ``GET /api/v1/cluster`` to the API (read-only, like the other GET routes)."""

    @app.get("/api/v1/cluster", dependencies=readers(app))
    async def cluster() -> dict[str, Any]:
        """The leader, the members (last seen, isolated) and every check's votes."""
        return snapshot(node)


class ClusterCollector(Collector):
    """Cluster metrics, read from the node's snapshot at scrape time."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        view = snapshot(self.node)
        leader = GaugeMetricFamily(
            "trafficflip_cluster_leader", "1 if this instance leads", labels=["name"]
        )
        leader.add_metric([view["name"]], 1 if view["leading"] else 0)
        etcd = GaugeMetricFamily("trafficflip_cluster_etcd_up", "1 if etcd answered last step")
        etcd.add_metric([], 1 if view["etcd"]["ok"] else 0)
        members = GaugeMetricFamily(
            "trafficflip_cluster_members", "Members by state", labels=["state"]
        )
        fresh = [m for m in view["members"] if m["fresh"]]
        members.add_metric(["fresh"], len(fresh))
        members.add_metric(["isolated"], sum(1 for m in view["members"] if m["isolated"]))
        votes = GaugeMetricFamily(
            "trafficflip_cluster_votes", "Votes per check and status", labels=["check", "status"]
        )
        for check in view["votes"]:
            for status in Status:
                count = sum(1 for s in check["votes"].values() if s == status.value)
                votes.add_metric([check["check"], status.value], count)
        refusals = CounterMetricFamily(
            "trafficflip_cluster_fencing_refusals",
            "Writes refused because this instance was not the leader",
            value=view["fencing_refusals"],
        )
        malformed = CounterMetricFamily(
            "trafficflip_cluster_malformed_entries",
            "Entries under the cluster prefix skipped because this version cannot read them",
            value=view["malformed_entries"],
        )
        restarts = CounterMetricFamily(
            "trafficflip_cluster_loop_restarts",
            "Times the cluster loop died and was started again",
            value=view["loop_restarts"],
        )
        yield from (leader, etcd, members, votes, refusals, malformed, restarts)


def register_metrics(registry: CollectorRegistry, node: ClusterNode) -> None:
    """Add the cluster metrics to the registry ``Metrics`` exposes."""
    registry.register(ClusterCollector(node))
