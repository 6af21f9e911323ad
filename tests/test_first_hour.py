"""What a newcomer meets in the first hour: no config, read-only commands, the demo extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, trafficflip_command


def test_no_configuration_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICFLIP_")}
    for command in (["check-config"], ["status"], ["run"], ["plan"]):
        result = subprocess.run(
            trafficflip_command(*command), env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 2, (command, result.stderr)
        assert "no configuration found" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_needs_no_provider_secret(tmp_path: Path) -> None:
    """The BIND example keeps its TSIG secret in the environment; status reads only state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAFFICFLIP_")}
    env["TRAFFICFLIP_STATE"] = f"sqlite:///{tmp_path / 'state.db'}"
    config = str(ROOT / "config" / "bind.yaml")
    check = subprocess.run(
        trafficflip_command("check-config", "--config", config),
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 2 and "secret" in check.stderr  # it is needed to run
    status = subprocess.run(
        trafficflip_command("status", "--config", config), env=env, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert "never run" in status.stdout
    assert not (tmp_path / "state.db").exists()


def test_the_demo_without_moto_says_how_to_install_it() -> None:
    code = (
        "import sys; sys.modules['moto'] = None; from trafficflip.cli import main; "
        "sys.exit(main(['demo']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "pip install 'trafficflip[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_version_read_as_plain_text() -> None:
    result = subprocess.run(trafficflip_command("--help"), capture_output=True, text=True)
    assert "``" not in result.stdout and "Exit codes" in result.stdout
    version = subprocess.run(trafficflip_command("--version"), capture_output=True, text=True)
    assert version.stdout.startswith("trafficflip ")
