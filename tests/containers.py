"""Podman for the tests that build and run the images: whether it works here, and the build.

The settings this host needs (container/containers.conf) are passed through CONTAINERS_CONF,
so /etc is left alone. Images are cached in podman's own storage between runs.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from typing import Any

from tests.support import ROOT

CONTAINER_DIR = ROOT / "container"
CONTAINERS_CONF = CONTAINER_DIR / "containers.conf"
IMAGE = "localhost/trafficflip:test"
BUILD_TIMEOUT = 1200  # a cold build debootstraps a base and downloads the dependencies


def podman_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), **(extra or {})}


def podman(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        ["podman", *args], env=podman_env(env), capture_output=True, text=True, timeout=timeout
    )


@functools.cache
def engine_problem() -> str | None:
    """Why containers cannot be built and run on this host, or None."""
    if os.geteuid() != 0:
        return "not root: the container tests run podman as root"
    if shutil.which("podman") is None:
        return "podman is not installed (make system-packages installs it as root)"
    info = podman("info")
    if info.returncode != 0:
        return f"podman does not work here: {info.stderr.strip()[-300:]}"
    return None


@functools.cache
def build_image() -> str:
    """The image built from the Dockerfile by the same script as ``make image``, once."""
    started = time.monotonic()
    build = subprocess.run(
        ["sh", str(CONTAINER_DIR / "build-image.sh")],
        env=podman_env({"ENGINE": "podman", "IMAGE": IMAGE}),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    assert build.stdout.strip() == IMAGE
    print(f"image {IMAGE} built in {time.monotonic() - started:.1f}s")
    return IMAGE


def base_image() -> str:
    """The base the image was built on when no registry is reachable (cached like it)."""
    result = subprocess.run(
        ["sh", str(CONTAINER_DIR / "base-image.sh")],
        env=podman_env({"ENGINE": "podman"}),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip()
