"""Each validation rule: exit status 2, the key path and the reason, no traceback."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, trafficflip_command
from trafficflip.config.durations import parse_duration
from trafficflip.config.loader import load_config
from trafficflip.config.schema import redact_url
from trafficflip.errors import ConfigError

BASE: dict[str, Any] = {
    "providers": {"aws": {"type": "route53"}},
    "services": [
        {
            "name": "www",
            "provider": "aws",
            "zone": "example.com.",
            "record": "www.example.com.",
            "type": "A",
            "ttl": 30,
            "health": {"interval": "5s", "timeout": "2s", "fall": 3, "rise": 2},
            "failback": {"stabilize": "2m", "steps": [10, 25, 50, 100], "step_duration": "1m"},
            "sites": [
                {
                    "name": "primary",
                    "targets": ["192.0.2.10"],
                    "checks": [{"type": "http", "url": "http://192.0.2.10/healthz", "body": "ok"}],
                },
                {
                    "name": "dr",
                    "targets": ["198.51.100.20"],
                    "checks": [{"type": "tcp", "address": "198.51.100.20:443"}],
                },
            ],
        }
    ],
}


def mutate(path: str, value: Any) -> dict[str, Any]:
    """BASE with ``path`` (dots, numeric parts index lists) set to ``value``; ``...`` deletes."""
    data = copy.deepcopy(BASE)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


S = "services.0."
CASES = [
    ("unknown key", mutate(S + "colour", "blue"), "services[0].colour: unknown key"),
    ("unknown nested key", mutate(S + "health.fal", 3), "services[0].health.fal: unknown key"),
    (
        "missing provider key",
        mutate(S + "provider", ...),
        "services[0].provider: required key is missing",
    ),
    (
        "unknown provider",
        mutate(S + "provider", "gcp"),
        "services[0].provider: unknown provider 'gcp'",
    ),
    (
        "unknown provider type",
        mutate("providers.aws.type", "nope"),
        "providers.aws.type: unknown provider type 'nope'",
    ),
    (
        "duplicate service",
        {**BASE, "services": BASE["services"] * 2},
        "services[1].name: duplicate name 'www'",
    ),
    (
        "duplicate site",
        mutate(S + "sites.1.name", "primary"),
        "services[0].sites[1].name: duplicate name 'primary'",
    ),
    (
        "record outside zone",
        mutate(S + "record", "www.example.org."),
        "services[0].record: www.example.org. is not inside zone example.com.",
    ),
    (
        "invalid A target",
        mutate(S + "sites.0.targets", ["2001:db8::1"]),
        "services[0].sites[0].targets[0]: 2001:db8::1 is not an IPv4 address",
    ),
    (
        "invalid target",
        mutate(S + "sites.0.targets", ["not-an-ip"]),
        "services[0].sites[0].targets[0]: 'not-an-ip' is not an IP address",
    ),
    (
        "invalid CNAME target",
        mutate(S + "type", "CNAME"),
        "services[0].sites[0].targets[0]: '192.0.2.10' is not a fully qualified host name",
    ),
    (
        "steps not ascending",
        mutate(S + "failback.steps", [50, 25, 100]),
        "services[0].failback.steps: must be strictly ascending",
    ),
    (
        "steps not ending at 100",
        mutate(S + "failback.steps", [10, 50]),
        "services[0].failback.steps: must end at 100",
    ),
    ("fall below 1", mutate(S + "health.fall", 0), "services[0].health.fall: must be at least 1"),
    ("rise below 1", mutate(S + "health.rise", 0), "services[0].health.rise: must be at least 1"),
    (
        "timeout not below interval",
        mutate(S + "health.timeout", "5s"),
        "services[0].health: timeout (5.0s) must be below interval (5.0s)",
    ),
    (
        "interval below 100ms",
        mutate(S + "health.interval", "50ms"),
        "services[0].health.interval: must be at least 100ms",
    ),
    (
        "malformed duration",
        mutate(S + "failback.stabilize", "2 minutes"),
        "services[0].failback.stabilize: invalid duration '2 minutes'",
    ),
    (
        "malformed URL",
        mutate(S + "sites.0.checks.0.url", "ftp://x/healthz"),
        "services[0].sites[0].checks[0].url: invalid URL 'ftp://x/healthz'",
    ),
    (
        "malformed address",
        mutate(S + "sites.1.checks.0.address", "198.51.100.20"),
        "services[0].sites[1].checks[0].address: invalid address '198.51.100.20': a port is "
        "required",
    ),
    (
        "step shorter than ttl",
        mutate(S + "failback.step_duration", "10s"),
        "services[0].failback.step_duration: 10s is shorter than the ttl (30s)",
    ),
    (
        "unknown check type",
        mutate(S + "sites.0.checks.0.type", "icmp"),
        "services[0].sites[0].checks[0]: Input tag 'icmp' found using 'type' does not match",
    ),
]


def cname_active_active() -> dict[str, Any]:
    data = mutate(S + "type", "CNAME")
    service = data["services"][0]
    service["mode"] = "active-active"
    service["sites"][0]["targets"] = ["a.example.net."]
    service["sites"][1]["targets"] = ["b.example.net."]
    return data


CASES.append(
    (
        "CNAME with two serving sites",
        cname_active_active(),
        "services[0].mode: a CNAME cannot have more than one serving site at once",
    )
)


def run_check_config(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "trafficflip.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run(
        trafficflip_command("check-config", "--config", str(path)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(("name", "data", "message"), CASES, ids=[c[0] for c in CASES])
def test_rule_exits_2_with_key_path(
    tmp_path: Path, name: str, data: dict[str, Any], message: str
) -> None:
    result = run_check_config(tmp_path, data)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_valid_config_is_ok(tmp_path: Path) -> None:
    result = run_check_config(tmp_path, BASE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK: 1 service"


def test_every_problem_is_reported_at_once() -> None:
    data = mutate(S + "health.fall", 0)
    data["services"][0]["record"] = "www.example.org."
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    assert any("health.fall" in p for p in raised.value.problems)
    data = mutate(S + "record", "www.example.org.")
    data["services"][0]["sites"][0]["targets"] = ["bogus"]
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    assert len(raised.value.problems) == 2


def test_run_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(mutate(S + "health.rise", 0)))
    result = subprocess.run(
        trafficflip_command("run", "--config", str(path)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "services[0].health.rise: must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    result = subprocess.run(
        trafficflip_command("check-config", "--config", "/nonexistent.yaml"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "cannot read /nonexistent.yaml" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [\n")
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(bad)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "invalid YAML" in result.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trafficflip.yaml"
    path.write_text(yaml.safe_dump(BASE))
    monkeypatch.setenv("TRAFFICFLIP_CONFIG", str(path))
    monkeypatch.setenv("TRAFFICFLIP_RECONCILE_INTERVAL", "10s")
    monkeypatch.setenv("TRAFFICFLIP_PROVIDERS__AWS__HOSTED_ZONE_ID", "Z123")
    config = load_config()
    assert config.settings.reconcile_interval == 10.0
    assert config.providers["aws"].config.hosted_zone_id == "Z123"  # type: ignore[attr-defined]


def test_durations() -> None:
    from trafficflip.config.durations import parse_duration

    assert [parse_duration(v) for v in ("250ms", "5s", "2m", "1h", 3, "1.5")] == [
        0.25,
        5.0,
        120.0,
        3600.0,
        3.0,
        1.5,
    ]
    for bad in ("5x", "", "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_example_configs_are_valid() -> None:
    for path in sorted((ROOT / "config").glob("route53*.yaml")):
        load_config(str(path))


def test_targets_are_canonical_so_they_compare_with_what_servers_return() -> None:
    data = mutate(S + "type", "AAAA")
    data["services"][0]["sites"][0]["targets"] = ["2001:DB8:0::1"]
    data["services"][0]["sites"][1]["targets"] = ["2001:db8::2"]
    config = load_config(data=data)
    assert config.services[0].sites[0].targets == ["2001:db8::1"]


def test_unknown_keys_and_other_problems_are_reported_together_with_near_misses() -> None:
    """A typo in a nested model used to hide a typo in the service's own keys (issue 18)."""
    data = mutate(S + "failback.stabilise", "2m")
    del data["services"][0]["failback"]["stabilize"]
    data["services"][0]["helth"] = data["services"][0].pop("health")
    data["providers"]["aws"]["regoin"] = "eu-west-1"
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    problems = raised.value.problems
    assert "services[0].failback.stabilise: unknown key (did you mean `stabilize`?)" in problems
    assert "services[0].helth: unknown key (did you mean `health`?)" in problems
    assert any(p.startswith("providers.aws.regoin: unknown key") for p in problems), problems
    # A key far from every known one gets no suggestion.
    with pytest.raises(ConfigError) as raised:
        load_config(data=mutate(S + "colour", "blue"))
    assert raised.value.problems == ["services[0].colour: unknown key"]


def test_a_near_miss_in_a_check_names_the_check_key() -> None:
    data = copy.deepcopy(BASE)
    data["services"][0]["sites"][0]["checks"][0]["expect_stauts"] = [200]
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    assert raised.value.problems == [
        "services[0].sites[0].checks[0].expect_stauts: unknown key (did you mean `expect_status`?)"
    ]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (S + "health.interval", float("nan")),
        (S + "failback.stabilize", float("inf")),
        ("reconcile_interval", float("-inf")),
        ("providers.aws.timeout", float("inf")),
        ("providers.aws.max_calls_per_second", float("inf")),
    ],
)
def test_non_finite_numbers_are_rejected_everywhere(path: str, value: float) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(data=mutate(path, value))
    key = re.sub(r"\.(\d+)\.", r"[\1].", path)
    assert raised.value.problems == [f"{key}: must be a finite number, not {value}"]


def test_non_finite_yaml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "trafficflip.yaml"
    path.write_text(yaml.safe_dump(BASE).replace("interval: 5s", "interval: .nan"))
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    assert "services[0].health.interval: must be a finite number, not nan" in result.stderr
    for bad in (float("nan"), float("inf"), "nan", "inf"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_malformed_tokens_variable_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "trafficflip.yaml"
    path.write_text(yaml.safe_dump(BASE))
    env = {**os.environ, "TRAFFICFLIP_API__TOKENS": "{admin: secret"}
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(path)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert "api.tokens: TRAFFICFLIP_API__TOKENS is not valid JSON" in result.stderr
    assert "secret" not in result.stderr.replace("TRAFFICFLIP", "")


def test_credentials_in_a_url_are_never_echoed() -> None:
    data = copy.deepcopy(BASE)
    check = data["services"][0]["sites"][0]["checks"][0]
    check["url"] = "http://admin:hunter2@192.0.2.10:port:1/healthz"
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    (problem,) = raised.value.problems
    assert problem.startswith("services[0].sites[0].checks[0].url: invalid URL 'http://***@")
    assert "hunter2" not in problem and "admin" not in problem
    assert redact_url("see http://u:p@ss@h/x and https://h/") == "see http://***@h/x and https://h/"


def test_a_shape_error_does_not_hide_the_rules_of_other_services() -> None:
    """One service's bad value made the whole invalid; the others are still judged whole."""
    data = mutate(S + "health.fall", 0)
    other = copy.deepcopy(data["services"][0])
    other.update(name="api", record="api.example.org.", health={})
    data["services"].append(other)
    data["services"][0]["colour"] = "blue"
    with pytest.raises(ConfigError) as raised:
        load_config(data=data)
    assert raised.value.problems == [
        "services[0].health.fall: must be at least 1, got 0",
        "services[1].record: api.example.org. is not inside zone example.com.",
        "services[0].colour: unknown key",
    ]
