"""A third-party adapter, installed as a distribution of its own, found through the
``trafficflip.providers`` entry-point group by ``importlib.metadata`` (no test hook), adds a
service key of its own that the core validates without knowing it."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, trafficflip_command

ADAPTER = """
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trafficflip.backend.provider import Provider, Receipt


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    pools: list[str] = []


class DemoService(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pool: str
    spread: int = Field(default=1, ge=1, le=8)


class DemoProvider(Provider):
    TYPE = "demo-pools"
    KIND = "pool"
    Config = DemoConfig
    Service = DemoService

    async def read(self, services):
        return {s.name: () for s in services}

    async def _apply(self, plan):
        return Receipt(self.name, (), 0.0)

    async def check_live(self, services):
        problems = []
        for service in services:
            keys = service.adapter_keys(DemoService)
            if keys.pool not in self.config.pools:
                problems.append(f"providers.{self.name}: no pool {keys.pool} x{keys.spread}")
        return problems
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A distribution on its own sys.path entry: a module and a ``.dist-info`` naming it."""
    root = tmp_path / "site"
    (root / "tfdemo_adapter-1.0.dist-info").mkdir(parents=True)
    (root / "tfdemo_adapter.py").write_text(ADAPTER, encoding="utf-8")
    info = root / "tfdemo_adapter-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tfdemo-adapter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [trafficflip.providers]
            demo-pools = tfdemo_adapter:DemoProvider
            """
        )
    )
    return root


def config(**service_keys: Any) -> dict[str, Any]:
    service = {
        "name": "www",
        "provider": "pools",
        "sites": [
            {"name": "a", "targets": ["s1"], "checks": [{"type": "tcp", "address": "127.0.0.1:9"}]}
        ],
        **service_keys,
    }
    return {"providers": {"pools": {"type": "demo-pools", "pools": ["p1"]}}, "services": [service]}


def check_config(
    tmp_path: Path, plugin: Path | None, data: dict[str, Any], *flags: str
) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (plugin, ROOT) if p)}
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(path), *flags),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout + result.stderr


def test_a_third_party_adapter_adds_its_own_key(tmp_path: Path, plugin_path: Path) -> None:
    code, output = check_config(tmp_path, plugin_path, config(pool="p1", spread=2))
    assert (code, output.strip()) == (0, "config OK: 1 service")
    code, output = check_config(tmp_path, plugin_path, config(pool="p1"), "--live")
    assert code == 0, output
    code, output = check_config(tmp_path, plugin_path, config(pool="p9", spread=3), "--live")
    assert (code, output.strip()) == (1, "providers.pools: no pool p9 x3")


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"pool": "p1", "colour": "blue"}, "services[0].colour: unknown key"),
        ({"pool": "p1", "backend": "be"}, "services[0].backend: unknown key"),
        ({"pool": "p1", "spread": 9}, "services[0].spread: Input should be less than or equal"),
        ({}, "services[0].pool: required key is missing"),
        ({"pool": "p1", "zone": "example.com."}, "services[0].zone: not used by a load-balancer"),
    ],
)
def test_the_adapters_keys_are_checked_with_their_path(
    tmp_path: Path, plugin_path: Path, keys: dict[str, Any], problem: str
) -> None:
    code, output = check_config(tmp_path, plugin_path, config(**keys))
    assert code == 2, output
    assert output.strip().startswith(problem), output


def test_without_the_distribution_the_type_is_unknown(tmp_path: Path) -> None:
    code, output = check_config(tmp_path, None, config(pool="p1"))
    assert code == 2, output
    assert "providers.pools.type: unknown provider type 'demo-pools'" in output
