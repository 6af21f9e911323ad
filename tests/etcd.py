"""A real 3-member etcd cluster (Debian's ``etcd``) on loopback ports in a temporary folder.

Members are started and stopped by PID; a stopped member restarts with its old data dir
(``--initial-cluster-state existing``), as an operator would bring one back.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import httpx
import pytest

from tests.support import Process, free_port, wait_until

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_ATTEMPTS = 3


def require_etcd() -> None:
    if not Path(ETCD).exists():
        pytest.skip("etcd not installed (Debian package etcd-server; `make test` installs it)")


class Member:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.client_port, self.peer_port = free_port(), free_port()
        self.data = root / name
        self.log = root / f"{name}.log"
        self.process: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str) -> None:
        self.starts += 1
        self.process = Process(
            [
                ETCD,
                "--name", self.name,
                "--data-dir", str(self.data),
                "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-state", state,
                "--initial-cluster-token", "trafficflip-test",
                # Loopback: short heartbeats make a lost member noticed quickly.
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
            ],
            log=self.log.with_suffix(f".{self.starts}.log"),
        )  # fmt: skip

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/health", timeout=1.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None:
            self.process.stop(sig)
            self.process = None


class EtcdCluster:
    """Three members; ``endpoints`` lists their client URLs."""

    def __init__(self, root: Path, size: int = 3) -> None:
        require_etcd()
        self.members: list[Member] = []
        self.initial = ""
        for attempt in range(START_ATTEMPTS):
            if self._start(root / f"try{attempt}", size):
                return
        raise AssertionError(f"etcd did not start in {START_ATTEMPTS} attempts; see {root}")

    def _start(self, root: Path, size: int) -> bool:
        """Start every member; False (all stopped) when one could not bind its ports: a free
        port picked here may be taken by another process before etcd binds it."""
        root.mkdir(parents=True, exist_ok=True)
        self.members = [Member(f"m{i}", root) for i in range(1, size + 1)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.start(self.initial, "new")
        try:
            wait_until(self._up_or_dead, timeout=30, what="etcd cluster healthy")
        except BaseException:
            self.stop()
            raise
        if self.healthy():
            return True
        self.stop()
        return False

    def _up_or_dead(self) -> bool:
        dead = any(m.process is None or not m.process.alive() for m in self.members)
        return dead or self.healthy()

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def healthy(self) -> bool:
        return all(m.healthy() for m in self.members if m.process is not None)

    def kill(self, index: int) -> None:
        self.members[index].stop(signal.SIGKILL)

    def restart(self, index: int) -> None:
        member = self.members[index]
        member.start(self.initial, "existing")
        wait_until(member.healthy, timeout=30, what=f"etcd {member.name} healthy again")

    def stop(self) -> None:
        for member in self.members:
            member.stop(signal.SIGTERM)
