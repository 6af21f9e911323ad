"""The ``cluster`` settings: YAML and environment, and problems as ``key.path: reason``."""

from __future__ import annotations

import pytest

from trafficflip.config.loader import load_config
from trafficflip.errors import ConfigError


def test_without_cluster_nothing_changes() -> None:
    assert load_config(data={}).settings.cluster is None


def test_the_environment_gives_a_comma_separated_member_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAFFICFLIP_CLUSTER__ETCD", "http://127.0.0.1:2379, http://127.0.0.1:2380")
    monkeypatch.setenv("TRAFFICFLIP_CLUSTER__NAME", "edge-a")
    monkeypatch.setenv("TRAFFICFLIP_CLUSTER__QUORUM", "2")
    monkeypatch.setenv("TRAFFICFLIP_CLUSTER__PASSWORD", "s3cret-etcd")
    cluster = load_config(data={}).settings.cluster
    assert cluster is not None
    assert cluster.etcd == ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
    assert (cluster.name, cluster.quorum, cluster.lease_ttl) == ("edge-a", 2, 10.0)
    assert cluster.prefix == "/trafficflip"
    assert "s3cret-etcd" not in repr(cluster)


@pytest.mark.parametrize(
    ("cluster", "problem"),
    [
        ({"etcd": ["http://a:2379"], "lease_ttl": "1s"}, "cluster.lease_ttl: at least 2s"),
        ({"etcd": ["http://a:2379"], "quorum": "most"}, "cluster.quorum: invalid quorum 'most'"),
        ({"etcd": ["http://a:2379"], "quorum": 0}, "cluster.quorum: invalid quorum 0"),
        ({"etcd": []}, "cluster.etcd: at least one etcd member URL"),
        ({"etcd": ["a:2379"]}, "cluster.etcd: invalid etcd URL 'a:2379'"),
        ({"etcd": ["http://a:2379"], "prefix": "tf"}, "cluster.prefix: invalid prefix 'tf'"),
        ({}, "cluster.etcd: required key is missing"),
    ],
)
def test_problems_name_the_key(cluster: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data={"cluster": cluster})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
