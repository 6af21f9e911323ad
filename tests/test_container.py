"""The image, built and run for real with podman: read-only root, the state volume, a mounted
config and secrets in the environment only, against moto and two sites on the host's loopback.

Skipped, with the reason, when not root or when podman does not work here. The image build
reuses the engine's layer cache and the local Debian base (container/base-image.sh).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.containers import build_image, engine_problem, podman
from tests.etcd import EtcdCluster
from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, TOKEN, Deployment
from tests.support import MotoServer, free_port, wait_until

USER_ID = 10001
STOP_BOUND = 10.0  # seconds from SIGTERM to exit, the bound

pytestmark = pytest.mark.skipif(engine_problem() is not None, reason=engine_problem() or "")


@pytest.fixture(scope="module")
def image() -> str:
    return build_image()


class Container:
    """``trafficflip run`` in the image, as a user would run it beside the edge."""

    def __init__(self, image: str, deployment: Deployment, moto: MotoServer) -> None:
        self.image = image
        self.deployment = deployment
        self.name = f"trafficflip-test-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = deployment.config
        # Secrets travel in the environment of `podman run`, named but never valued on its
        # command line, so they are in no image layer and in no process listing.
        self.secrets = {**moto.env(), "TRAFFICFLIP_API__TOKENS": json.dumps({"ops": TOKEN})}
        self.http = httpx.Client(base_url=self.url, timeout=5)
        assert podman("volume", "create", self.volume).returncode == 0

    def run(self, **env: str) -> None:
        """``env``: more settings, on the command line (no secrets among them)."""
        result = podman(
            "run", "--detach", "--name", self.name,
            "--read-only", "--network", "host",
            "--volume", f"{self.volume}:/var/lib/trafficflip",
            "--volume", f"{self.config}:/etc/trafficflip/trafficflip.yaml:ro",
            *[arg for key in self.secrets for arg in ("--env", key)],
            "--env", f"TRAFFICFLIP_API__LISTEN=127.0.0.1:{self.port}",
            "--env", "TRAFFICFLIP_LOG_FORMAT=text",
            *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
            self.image,
            env=self.secrets,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    def answering(self, path: str = "/healthz") -> bool:
        assert self.state() == "running", self.logs()
        try:
            return self.http.get(path).status_code == 200
        except httpx.TransportError:
            return False

    def state(self) -> str:
        return str(podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip())

    def logs(self) -> str:
        result = podman("logs", self.name)
        return str(result.stdout + result.stderr)

    def www(self) -> dict[str, Any]:
        response = self.http.get("/api/v1/services/www?journal=50")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def pin(self, site: str) -> None:
        response = self.http.post(
            "/api/v1/services/www/failover",
            json={"to": site, "reason": "container test"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200, response.text

    def terminate(self) -> tuple[int, float]:
        """SIGTERM to the container's PID 1; its exit code and the seconds it took."""
        started = time.monotonic()
        assert podman("kill", "--signal", "TERM", self.name).returncode == 0
        waited = podman("wait", self.name, timeout=STOP_BOUND + 20)
        return int(waited.stdout.strip()), time.monotonic() - started

    def volume_path(self) -> Path:
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", self.volume)
        return Path(mountpoint.stdout.strip())

    def close(self) -> None:
        self.http.close()
        podman("rm", "--force", "--time", "0", self.name)
        podman("volume", "rm", "--force", self.volume)


class ContainerDeployment(Deployment):
    """The test deployment with the state where the image keeps it: on the volume."""

    def config_data(self, steps: list[int], step_duration: str) -> dict[str, Any]:
        data = super().config_data(steps, step_duration)
        data["state"] = "sqlite:////var/lib/trafficflip/state.db"
        return data


@pytest.fixture
def container(image: str, tmp_path: Path, moto_server: MotoServer) -> Iterator[Container]:
    deployment = ContainerDeployment(tmp_path, moto_server, steps=[50, 100])
    deployment.config.chmod(0o644)  # read by uid 10001 through the bind mount
    running = Container(image, deployment, moto_server)
    try:
        yield running
    finally:
        (tmp_path / "container.log").write_text(running.logs())
        running.close()
        deployment.close()


def test_image_runs_as_non_root_with_a_healthcheck_and_a_volume(image: str) -> None:
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    config = inspected["Config"]
    assert config["User"] == f"{USER_ID}:{USER_ID}"
    assert "/var/lib/trafficflip" in config["Volumes"]
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Entrypoint"] == ["trafficflip"] and config["Cmd"] == ["run"]
    # Kept only in the docker image format (build-image.sh asks podman for it).
    healthcheck = inspected["Healthcheck"]
    assert healthcheck["Test"][0] == "CMD" and "/healthz" in " ".join(healthcheck["Test"])
    print(f"image size {inspected['Size'] / 1e6:.0f} MB")


def test_failover_failback_sigterm_and_restart(container: Container) -> None:
    deployment = container.deployment
    container.run()
    wait_until(container.answering, timeout=60, what="the API in the container")
    wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")

    deployment.primary.stop()
    wait_until(
        lambda: deployment.weights() == STANDBY,
        timeout=FALL * INTERVAL + 5.0,
        what="failover to dr through the container",
    )
    deployment.primary.start()
    wait_until(lambda: deployment.weights() == PRIMARY, timeout=30, what="failback")

    check = podman("healthcheck", "run", container.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert_runs_read_only_as_uid(container)

    container.pin("dr")
    wait_until(lambda: deployment.weights() == STANDBY, timeout=20, what="operator failover")
    code, seconds = container.terminate()
    assert code == 0 and seconds < STOP_BOUND, (code, seconds, container.logs()[-2000:])
    state = container.volume_path() / "state.db"
    assert state.exists() and state.stat().st_uid == USER_ID

    assert podman("start", container.name).returncode == 0
    wait_until(lambda: container.answering("/readyz"), timeout=60, what="ready after restart")
    www = container.www()
    assert www["pinned"] == "dr", www
    kinds = [event["kind"] for event in www["journal"]]
    # The first run's failover and failback are in the journal the second run reads.
    assert "failover" in kinds and "failback_completed" in kinds, kinds
    assert deployment.weights() == STANDBY


def assert_runs_read_only_as_uid(container: Container) -> None:
    status = podman("exec", container.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {str(USER_ID)}, status
    root_write = podman("exec", container.name, "touch", "/opt/trafficflip/written")
    assert root_write.returncode != 0 and "Read-only file system" in root_write.stderr


def test_cluster_mode_in_the_container(container: Container, tmp_path: Path) -> None:
    """The image carries trafficflip.cluster: an instance in it leads on a real etcd (on the
    host's loopback) and fails over."""
    etcd = EtcdCluster(tmp_path / "etcd", size=1)
    try:
        container.run(
            TRAFFICFLIP_CLUSTER__ETCD=",".join(etcd.endpoints),
            TRAFFICFLIP_CLUSTER__NAME="edge-a",
        )
        wait_until(container.answering, timeout=60, what="the API in the container")

        def leading() -> bool:
            response = container.http.get("/api/v1/cluster")
            return response.status_code == 200 and response.json()["leading"] is True

        wait_until(leading, timeout=30, what="the container leading on etcd")
        deployment = container.deployment
        wait_until(lambda: deployment.weights() == PRIMARY, timeout=20, what="initial weights")
        deployment.primary.stop()
        wait_until(
            lambda: deployment.weights() == STANDBY,
            timeout=FALL * INTERVAL + 10.0,
            what="failover to dr from the container in cluster mode",
        )
    finally:
        etcd.stop()
