"""Property-based run of schemathesis against a running service's OpenAPI document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.service import PRIMARY, TOKEN, Service
from tests.support import MotoServer, wait_until

# Bounded so that the whole suite stays short; the seed makes a failure reproducible.
MAX_EXAMPLES, MAX_SECONDS, SEED = 15, 60, 20240611


def test_openapi_conformance(tmp_path: Path, moto_server: MotoServer) -> None:
    service = Service(tmp_path, moto_server)
    try:
        service.start()
        wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")
        result = schemathesis(service, tmp_path)
        # Every command the run made went through the command path; the service still runs.
        assert service.answering()
    finally:
        service.close()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout, result.stdout[-3000:]
    assert "Internal Server Error" not in service.output()


def schemathesis(service: Service, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(cli),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--max-time",
            str(MAX_SECONDS),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=MAX_SECONDS + 60,
    )
