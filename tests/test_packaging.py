"""The package a user installs: ``python -m build`` makes a wheel and an sdist, and the wheel
alone, in a clean venv, gives a ``trafficflip`` that checks a config and runs a failover."""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import trafficflip
from tests.etcd import EtcdCluster
from tests.service import PRIMARY, STANDBY, Deployment
from tests.support import ROOT, MotoServer, Process, free_port, wait_until

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None,
    reason="the build package is not installed (pip install -e '.[test]' installs it)",
)


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def clean_copy(into: Path) -> Path:
    """The source tree as a fresh clone has it (what the image's build context copies): an
    ``*.egg-info`` left by an editable install would hand setuptools the files that the
    package configuration forgot."""
    files = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in files.splitlines():
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clean_copy(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def dist(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, source)
    return out


def test_a_wheel_built_from_the_tree_has_every_package(
    source: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``pip install .`` (the image) builds the wheel from the tree, not from an sdist."""
    out = tmp_path_factory.mktemp("wheel")
    log = run(sys.executable, "-m", "build", "--wheel", "--outdir", out, source)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    for package in sorted(ROOT.glob("trafficflip/**/__init__.py")):
        assert package.relative_to(ROOT).as_posix() in names
    assert "trafficflip/operations/static/status.html" in names
    assert "absent from the `packages` configuration" not in log


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed in a venv that sees neither the source tree nor the test venv."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", venv)
    (wheel,) = dist.glob("*.whl")
    run(venv / "bin" / "pip", "install", "-q", wheel)
    return venv / "bin" / "trafficflip"


def test_wheel_and_sdist_carry_the_version_and_the_license(dist: Path) -> None:
    version = trafficflip.__version__
    (wheel,) = dist.glob(f"trafficflip-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"trafficflip-{version}.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"trafficflip-{version}.dist-info/METADATA").decode()
    assert f"trafficflip-{version}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert f"Version: {version}" in metadata
    assert "trafficflip/providers/route53.py" in names
    # Every package of the source tree is in the wheel (a hand-written list once forgot one).
    for package in sorted(ROOT.glob("trafficflip/**/__init__.py")):
        assert package.relative_to(ROOT).as_posix() in names
    assert "trafficflip/operations/static/" in " ".join(names)
    with tarfile.open(sdist) as archive:
        assert f"trafficflip-{version}/LICENSE" in archive.getnames()


def test_installed_wheel_checks_the_example_configs(installed: Path, tmp_path: Path) -> None:
    assert "check-config" in run(installed, "--help", cwd=tmp_path)
    # The BIND example keeps its TSIG secret out of the file, as a deployment would.
    secret = base64.b64encode(os.urandom(32)).decode()
    examples = {
        "route53.yaml": {},
        "bind.yaml": {"TRAFFICFLIP_PROVIDERS__BIND__TSIG__SECRET": secret},
        "elbv2.yaml": {},
        "haproxy.yaml": {},
    }
    for example, env in examples.items():
        run(installed, "check-config", "--config", ROOT / "config" / example, cwd=tmp_path, env=env)


def test_installed_wheel_prints_its_version(installed: Path, tmp_path: Path) -> None:
    assert run(installed, "--version", cwd=tmp_path).strip().endswith(trafficflip.__version__)


@pytest.fixture
def deployment(tmp_path: Path, moto_server: MotoServer) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, moto_server, steps=[100])
    yield deployment
    deployment.close()


def test_installed_wheel_runs_a_failover(installed: Path, deployment: Deployment) -> None:
    deployment.process = Process(
        [str(installed), "run", "--config", str(deployment.config)],
        env=deployment.env,
        log=deployment.tmp_path / "run.log",
        cwd=deployment.tmp_path,
    )
    wait_until(lambda: deployment.weights() == PRIMARY, timeout=30, what="initial weights")
    deployment.primary.stop()
    wait_until(lambda: deployment.weights() == STANDBY, timeout=10, what="failover to dr")
    assert deployment.process.stop() == 0, deployment.output()


def test_installed_wheel_runs_cluster_mode_on_etcd(
    installed: Path, deployment: Deployment, tmp_path: Path
) -> None:
    """Cluster mode imports trafficflip.cluster: the instance leads on a real etcd and fails
    over from the wheel alone."""
    etcd = EtcdCluster(tmp_path / "etcd", size=1)
    port = free_port()
    env = {
        **deployment.env,
        "TRAFFICFLIP_CLUSTER__ETCD": ",".join(etcd.endpoints),
        "TRAFFICFLIP_CLUSTER__NAME": "edge-a",
        "TRAFFICFLIP_API__LISTEN": f"127.0.0.1:{port}",
    }
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def leading() -> bool:
        try:
            response = api.get("/api/v1/cluster")
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json()["leading"] is True

    try:
        deployment.process = Process(
            [str(installed), "run", "--config", str(deployment.config)],
            env=env,
            log=tmp_path / "cluster-run.log",
            cwd=tmp_path,
        )
        wait_until(leading, timeout=30, what="the installed instance leading on etcd")
        wait_until(lambda: deployment.weights() == PRIMARY, timeout=30, what="initial weights")
        deployment.primary.stop()
        wait_until(lambda: deployment.weights() == STANDBY, timeout=15, what="failover to dr")
        assert deployment.process.stop() == 0, deployment.output()
    finally:
        api.close()
        etcd.stop()
