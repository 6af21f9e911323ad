"""Phases with what they wait for, the summary, and the ``status`` table (pure and CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trafficflip import cli
from trafficflip.config.loader import load_config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.commands import CommandResult, apply_command, validate_reason
from trafficflip.decision.model import JournalEntry, Ramp, ServiceState, SiteHealth, Status
from trafficflip.errors import CommandError, TrafficflipError
from trafficflip.operations.status import Row, phase, summarize, table
from trafficflip.runtime.state import open_store

FAILED_OVER = ServiceState(members=("dr",), shares={"primary": 0, "dr": 100})
NORMAL = ServiceState(members=("primary",), shares={"primary": 100, "dr": 0})


def service_data(name: str, **failback: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "aws",
        "zone": "example.com.",
        "record": f"{name}.example.com.",
        "type": "A",
        "ttl": 60,
        "failback": {"stabilize": "2m", "steps": [50, 100], "step_duration": "1m", **failback},
        "sites": [
            {
                "name": "primary",
                "targets": ["192.0.2.10"],
                "checks": [{"type": "tcp", "address": "127.0.0.1:1"}],
            },
            {
                "name": "dr",
                "targets": ["198.51.100.20"],
                "checks": [{"type": "tcp", "address": "127.0.0.1:2"}],
            },
        ],
    }


def service(**failback: Any) -> ServiceConfig:
    return ServiceConfig.model_validate(service_data("www", **failback))


def at(t: float) -> str:
    return f"t={t:g}"


def test_failed_over_says_when_the_primary_may_return() -> None:
    health = {"primary": SiteHealth(Status.UP, since=100.0), "dr": SiteHealth(Status.UP, 5.0)}
    now = phase(service(), FAILED_OVER, health, None, at_text=at)
    assert now.name == "failed over" and now.detail == "primary up, stabilizing until t=220"
    down = {"primary": SiteHealth(Status.DOWN, 100.0, "status 503 x3"), "dr": SiteHealth(Status.UP)}
    assert (
        phase(service(), FAILED_OVER, down, None, at_text=at).detail
        == "primary down: status 503 x3"
    )


def test_manual_failback_and_gates_are_named() -> None:
    health = {"primary": SiteHealth(Status.UP, since=100.0), "dr": SiteHealth(Status.UP, 5.0)}
    manual = phase(service(mode="manual"), FAILED_OVER, health, None, at_text=at)
    assert manual.detail == "primary up, awaiting failback approval"
    gated = service(gates=[{"type": "tcp", "address": "127.0.0.1:3"}])
    gates = SiteHealth(Status.DOWN, 90.0, "connect refused x2")
    now = phase(gated, FAILED_OVER, health, gates, at_text=at)
    assert now.detail == "primary up, stabilizing until t=220; gates down: connect refused x2"


def test_ramp_names_the_next_step_time_not_a_countdown() -> None:
    ramping = ServiceState(
        members=("dr",),
        ramp=Ramp(("primary",), 0, since=100.0),
        shares={"primary": 50, "dr": 50},
        applied_at=130.0,
    )
    now = phase(service(), ramping, None, None, at_text=at)
    assert (now.name, now.detail) == ("ramping", "step 1 of 2 to primary, next at t=190")


def test_provider_error_and_all_down_come_before_the_rest() -> None:
    held = ServiceState(members=("primary",), shares={"primary": 100, "dr": 0}, held=True)
    assert (
        phase(service(), held, None, None, provider_error="permanent: denied").name
        == "provider error"
    )
    down = ServiceState(members=("primary",), shares={"primary": 100, "dr": 0}, all_down=True)
    assert phase(service(), down, None, None, provider_error="x").name == "all down"


def test_table_columns_stay_aligned_whatever_the_detail() -> None:
    rows = [
        Row(
            "www",
            "ramping",
            [("primary", 50), ("dr", 50)],
            "in sync",
            "step 1 of 4, next at 12:04:30",
        ),
        Row("api-long-name", "normal", [("primary", 100), ("dr", 0)], "-", ""),
    ]
    lines = table(rows).splitlines()
    starts = {line.index("primary=") for line in lines[1:]} | {lines[0].index("SHARES")}
    assert len(starts) == 1, lines
    change = {
        line.index(" " + word) for line, word in zip(lines, ["CHANGE", "in sync", "-"], strict=True)
    }
    assert len(change) == 1, lines


def test_summary_line_counts_every_phase() -> None:
    summary = summarize(["normal", "failed over", "normal", "pinned"], 3, None)
    assert summary.line() == (
        "4 services: 2 normal, 1 failed over, 0 ramping, 0 held, 0 all down, 0 provider error, "
        "1 pinned; 3 checks down; last failover never"
    )


def test_command_results_and_reasons() -> None:
    assert issubclass(CommandError, TrafficflipError)
    for result in (CommandResult(True), CommandResult.rejected("no site 'x'")):
        assert CommandResult.decode(result.encode()) == result
    assert CommandResult.decode("error: no site 'x'") == CommandResult(False, "no site 'x'")
    assert validate_reason("maintenance window 42") == "maintenance window 42"
    for bad in ("two\nlines", "x" * 501, "bell\x07"):
        with pytest.raises(CommandError):
            validate_reason(bad)
    with pytest.raises(CommandError, match="one line"):
        apply_command(service(), NORMAL, "hold", {"reason": "a\nforged line"})
    with pytest.raises(CommandError, match="unknown command"):
        apply_command(service(), NORMAL, "explode", {})


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    config = tmp_path / "trafficflip.yaml"
    data = {
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "providers": {"aws": {"type": "route53"}},
        "services": [service_data(n) for n in ("alpha", "bravo", "charlie")],
    }
    config.write_text(yaml.safe_dump(data))
    store = open_store(load_config(str(config)).settings.state)
    store.save("alpha", NORMAL, [])
    failover = JournalEntry(
        1_700_000_000.0, "charlie", "failover", "primary down", {"shares": {"dr": 100}}
    )
    store.save("charlie", FAILED_OVER, [failover])
    store.close()
    return config


def test_status_lists_what_is_not_normal_first(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--config", str(deployment)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 services: 1 normal, 1 failed over, 0 ramping")
    assert "checks not known" in lines[0] and "last failover never" not in lines[0]
    listed = [line.split()[0] for line in lines[2:4]]
    assert listed == ["charlie", "bravo"]  # failed over, then never run; alpha is normal
    assert lines[4] == "(1 normal service not listed; --all lists them)"
    assert cli.main(["status", "--all", "--journal", "0", "--config", str(deployment)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == ["charlie", "bravo", "alpha"]


def test_cli_reason_is_validated_like_the_api(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["hold", "alpha", "--reason", "a\nforged", "--config", str(deployment)])
    assert code == 2 and "--reason: reason must be one line" in capsys.readouterr().err
