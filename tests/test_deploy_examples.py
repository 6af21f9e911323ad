"""The deployment examples, checked offline: the Kubernetes manifests against the API
schemas (kubernetes-validate, strict: unknown fields fail), and both examples against what
the image provides (user, volume, port, probes) and what trafficflip accepts as config."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, trafficflip_command

KUBERNETES = ROOT / "config" / "kubernetes" / "trafficflip.yaml"
COMPOSE = ROOT / "config" / "compose.yaml"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still in upstream support when written


def manifests() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]
    return {d["kind"]: d for d in documents}


def dockerfile(instruction: str) -> str:
    """The argument of the last ``instruction`` line in the Dockerfile."""
    found = re.findall(rf"^{instruction} (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    return str(found[-1])


def pod_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.skipif(
    importlib.util.find_spec("kubernetes_validate") is None,
    reason="kubernetes-validate is not installed (pip install -e '.[test]' installs it)",
)
@pytest.mark.parametrize(
    "kind", ["ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service"]
)
def test_kubernetes_manifest_matches_the_api_schema(kind: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifests()[kind], KUBERNETES_VERSION, strict=True)


def test_kubernetes_deployment_fits_the_image() -> None:
    deployment = manifests()["Deployment"]
    spec = deployment["spec"]
    # One deciding instance on a ReadWriteOnce SQLite volume: never two pods at once.
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    user, group = dockerfile("USER").split(":")
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsGroup"] == int(group)
    container = pod_container(deployment)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (port,) = container["ports"]
    assert f"{port['containerPort']}" == dockerfile("EXPOSE")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert dockerfile("VOLUME").strip('[]"') in mounts
    assert "/etc/trafficflip" in mounts


def test_kubernetes_secrets_come_from_the_secret() -> None:
    secret_keys = set(manifests()["Secret"]["stringData"])
    container = pod_container(manifests()["Deployment"])
    refs = [e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e]
    assert refs and set(refs) <= secret_keys
    # No secret value is written inline in the Deployment.
    assert all("SECRET" not in e["name"] or "valueFrom" in e for e in container["env"])


def test_kubernetes_configmap_is_a_valid_trafficflip_config(tmp_path: Path) -> None:
    config = tmp_path / "trafficflip.yaml"
    config.write_text(manifests()["ConfigMap"]["data"]["trafficflip.yaml"])
    tokens = tmp_path / "api-tokens"
    tokens.write_text(manifests()["Secret"]["stringData"]["api-tokens"])
    env = {
        **os.environ,
        "TRAFFICFLIP_PROVIDERS__BIND__TSIG__SECRET": base64.b64encode(os.urandom(32)).decode(),
        "TRAFFICFLIP_API__TOKENS_FILE": str(tokens),
    }
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(config)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_service_fits_the_image() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["trafficflip"]
    assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    targets = {volume.split(":")[1] for volume in service["volumes"]}
    assert {dockerfile("VOLUME").strip('[]"'), "/etc/trafficflip/trafficflip.yaml"} <= targets
    assert service["ports"] == [f"127.0.0.1:8080:{dockerfile('EXPOSE')}"]
    # Secrets come from the environment or a secrets file, never a literal in the file.
    for name, value in service["environment"].items():
        if "SECRET" in name or "TOKEN" in name:
            assert value.startswith("${") or value.startswith("/run/secrets/"), name
