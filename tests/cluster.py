"""Three ``trafficflip run`` instances in cluster mode on a real 3-member etcd, with Route53 in
moto and two loopback sites (``tests/service.py``'s Deployment). Stopped by PID.

``uids`` runs each instance as its own user (``setpriv``), so iptables' owner match can cut
one vantage point off from a site while the others still reach it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.etcd import EtcdCluster
from tests.service import TOKEN, Deployment
from tests.support import (
    ROOT,
    HttpSite,
    MotoServer,
    Process,
    free_port,
    trafficflip_command,
    wait_until,
)

LEASE_TTL = 3.0
NAMES = ("edge-a", "edge-b", "edge-c")
FIRST_UID = 64000
PRIMARY_ADDRESS = "127.0.0.2"
DR_ADDRESS = "127.0.0.3"


class Instance:
    def __init__(
        self, name: str, index: int, deployment: Deployment, etcd: EtcdCluster, config: Path
    ) -> None:
        self.name = name
        self.config = config
        self.port = free_port()
        self.uid = FIRST_UID + index
        self.deployment = deployment
        self.env = {
            **deployment.env,
            "TRAFFICFLIP_CONFIG": str(config),
            "TRAFFICFLIP_CLUSTER__ETCD": ",".join(etcd.endpoints),
            "TRAFFICFLIP_CLUSTER__NAME": name,
            "TRAFFICFLIP_CLUSTER__LEASE_TTL": f"{LEASE_TTL}s",
            "TRAFFICFLIP_API__LISTEN": f"127.0.0.1:{self.port}",
            "TRAFFICFLIP_API__TOKENS": f'{{"ops": "{TOKEN}"}}',
        }
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        self.process: Process | None = None
        self.runs = 0

    def start(self, *, as_uid: bool = False) -> None:
        self.runs += 1
        command = trafficflip_command("run", "--config", str(self.config))
        if as_uid:
            command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}",
                       "--clear-groups", *command]  # fmt: skip
        log = self.deployment.tmp_path / f"{self.name}.{self.runs}.log"
        self.process = Process(command, env=self.env, log=log, cwd=ROOT)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def get(self, path: str) -> httpx.Response | None:
        try:
            return self.http.get(path)
        except httpx.TransportError:
            return None

    def cluster(self) -> dict[str, Any] | None:
        response = self.get("/api/v1/cluster")
        return response.json() if response is not None and response.status_code == 200 else None

    def ready(self) -> int | None:
        response = self.get("/readyz")
        return response.status_code if response is not None else None

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.alive():
                os.kill(self.process.pid, signal.SIGCONT)  # a stopped process cannot exit
            self.process.stop()
        self.http.close()

    def output(self) -> str:
        return self.process.output() if self.process else ""


class ClusterDeployment:
    def __init__(
        self, tmp_path: Path, moto: MotoServer, *, steps: list[int], step_duration: str = "2s",
        as_uid: bool = False,
    ) -> None:  # fmt: skip
        self.etcd = EtcdCluster(tmp_path / "etcd")
        try:
            self.deployment = Deployment(tmp_path, moto, steps=steps, step_duration=step_duration)
        except BaseException:
            self.etcd.stop()
            raise
        # Each site on its own loopback address, so iptables can cut a vantage off from it
        # and from nothing else (etcd and moto stay on 127.0.0.1).
        self.deployment.primary.stop()
        self.deployment.primary = HttpSite(PRIMARY_ADDRESS).start()
        self.deployment.dr.stop()
        self.deployment.dr = HttpSite(DR_ADDRESS).start()
        data = self.deployment.config_data(steps, step_duration)
        self.deployment.config.write_text(yaml.safe_dump(data))
        self.config = self.deployment.config
        self.shared: Path | None = None
        if as_uid:
            # Instances running as other users read the config (pytest's folders are 0700)
            # and write nothing else: their logs are written by this process.
            self.shared = Path(tempfile.mkdtemp(prefix="tf-cluster-"))
            self.shared.chmod(0o755)
            self.config = self.shared / "trafficflip.yaml"
            shutil.copy(self.deployment.config, self.config)
            self.config.chmod(0o644)
        self.instances = [
            Instance(name, i, self.deployment, self.etcd, self.config)
            for i, name in enumerate(NAMES)
        ]
        for instance in self.instances:
            instance.start(as_uid=as_uid)

    def weights(self) -> dict[str, int]:
        return self.deployment.weights()

    def leader(self, among: list[Instance] | None = None) -> Instance | None:
        """The instance every one of ``among`` (default: all alive) names as leader."""
        among = among or [i for i in self.instances if i.alive()]
        views = [i.cluster() for i in among]
        if any(v is None for v in views):
            return None
        names = {v["leader"] for v in views if v is not None}
        leading = [i for i, v in zip(among, views, strict=True) if v is not None and v["leading"]]
        if len(names) != 1 or len(leading) != 1 or leading[0].name not in names:
            return None
        return leading[0]

    def wait_leader(self, among: list[Instance] | None = None, timeout: float = 30) -> Instance:
        return wait_until(lambda: self.leader(among), timeout=timeout, what="one agreed leader")

    def outputs(self) -> str:
        return "\n".join(f"--- {i.name}\n{i.output()[-6000:]}" for i in self.instances)

    def close(self) -> None:
        for instance in self.instances:
            instance.stop()
        self.deployment.close()
        self.etcd.stop()
        if self.shared is not None:
            shutil.rmtree(self.shared, ignore_errors=True)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: instances run as their own uid and iptables cuts them off")
    for tool in ("iptables", "setpriv"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} not installed")


def cut_off(uid: int, address: str, *, remove: bool = False) -> None:
    """Make connections from ``uid`` to ``address`` fail at once (a vantage point's outage)."""
    subprocess.run(
        ["iptables", "-D" if remove else "-A", "OUTPUT", "-p", "tcp", "-d", address,
         "-m", "owner", "--uid-owner", str(uid), "-j", "REJECT", "--reject-with", "tcp-reset"],
        check=True,
    )  # fmt: skip
