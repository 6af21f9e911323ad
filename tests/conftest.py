from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import HttpSite, MotoServer, free_port


@pytest.fixture
def site() -> Iterator[HttpSite]:
    server = HttpSite().start()
    yield server
    server.stop()


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = moto_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in list(os.environ):
        if key.startswith("TRAFFICFLIP_"):
            monkeypatch.delenv(key)
    return env


@pytest.fixture(autouse=True)
def api_port(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every service a test starts listens on a free loopback port, never on the default
    8080 that something else on the machine may hold."""
    listen = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("TRAFFICFLIP_API__LISTEN", listen)
    return listen
