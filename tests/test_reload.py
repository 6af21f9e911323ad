"""Reload validation: a file that drops services (written in place, read half-written) is
rejected unless the removal is asked for; problems never echo a URL's credentials."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.factories import service_data
from trafficflip.backend.testing import MemoryProvider
from trafficflip.config.loader import Config, load_config
from trafficflip.config.schema import ApiConfig
from trafficflip.operations.api import create_app, load_tokens
from trafficflip.operations.metrics import Metrics
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.reload import Reloader
from trafficflip.runtime.scheduler import Runner
from trafficflip.runtime.state import SqliteStateStore

TOKEN = "operator-token-0123"
NAMES = ["www", "api", "mail", "shop"]


def data(names: list[str], **settings: Any) -> dict[str, Any]:
    return {
        "providers": {"aws": {"type": "route53"}},
        "services": [service_data(name) for name in names],
        **settings,
    }


class Rig:
    def __init__(self, path: Path, **settings: Any) -> None:
        self.path = path
        self.write(NAMES, **settings)
        config = load_config(str(path))
        store = SqliteStateStore(":memory:")
        self.engine = Engine(config.services, store, {"aws": MemoryProvider()})
        self.reloader = Reloader(str(path), config, self.engine, self.build)

    def write(self, names: list[str], **settings: Any) -> None:
        self.path.write_text(yaml.safe_dump(data(names, **settings)))

    @staticmethod
    def build(config: Config) -> dict[str, MemoryProvider]:
        return {"aws": MemoryProvider()}


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path / "trafficflip.yaml")


async def test_a_reload_that_removes_services_is_rejected_naming_them(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.write(NAMES[:2])  # what a reader sees of a file cut after its second service
    caplog.set_level(logging.ERROR)
    problems = rig.reloader.reload()
    assert problems == [
        "services: the reload would remove 2 of 4 services (mail, shop); if that is meant, "
        'reload with --allow-removal (POST /api/v1/reload {"allow_removal": true}); a file '
        "written in place may have been read half-written"
    ]
    assert f"reload_rejected {problems[0]}" in caplog.text
    assert sorted(rig.engine.services) == sorted(NAMES)
    rig.write([])  # services: []
    assert rig.reloader.reload()[0].startswith("services: the reload would remove 4 of 4")
    rig.write(NAMES[:2])
    assert rig.reloader.reload(allow_removal=True) == []
    assert sorted(rig.engine.services) == ["api", "www"]


async def test_a_configured_share_may_be_removed_without_asking(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "trafficflip.yaml", reload_removal_share=0.25)
    rig.write(NAMES[:2], reload_removal_share=0.25)
    assert rig.reloader.reload()[0].startswith("services: the reload would remove 2 of 4")
    rig.write(NAMES[:3], reload_removal_share=0.25)
    assert rig.reloader.reload() == []
    assert sorted(rig.engine.services) == ["api", "mail", "www"]


async def test_added_and_changed_services_need_no_permission(rig: Rig) -> None:
    rig.write([*NAMES, "extra"])
    assert rig.reloader.reload() == []
    assert "extra" in rig.engine.services


async def test_the_reload_api_takes_allow_removal_and_never_echoes_credentials(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    config = ApiConfig.model_validate({"tokens": {"ops": TOKEN}})
    runner = Runner(rig.engine, Prober(), reconcile_interval=30)
    app = create_app(
        rig.engine,
        runner,
        Metrics(rig.engine, runner),
        load_tokens(config),
        config,
        reload=rig.reloader.reload,
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", headers=headers
    ) as api:
        broken = data(NAMES)
        url = "http://admin:hunter2@192.0.2.10:port:1/healthz"
        broken["services"][0]["sites"][0]["checks"] = [{"type": "http", "url": url}]
        rig.path.write_text(yaml.safe_dump(broken))
        answer = await api.post("/api/v1/reload")
        assert answer.status_code == 400
        assert "hunter2" not in answer.text and "http://***@" in answer.text
        assert "hunter2" not in caplog.text and "reload_rejected" in caplog.text
        rig.write(NAMES[:1])
        answer = await api.post("/api/v1/reload")
        assert answer.status_code == 400 and "remove 3 of 4" in answer.json()["problems"][0]
        answer = await api.post("/api/v1/reload", json={"allow_removal": 1})
        assert answer.status_code == 422  # a yes to removing services is said as true
        answer = await api.post("/api/v1/reload", json={"allow_removal": True})
        assert answer.status_code == 200, answer.text
    assert list(rig.engine.services) == ["www"]
