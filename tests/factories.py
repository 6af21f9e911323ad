"""The standard service of the tests: two sites, primary and dr, one check each.

``service_data`` is the YAML-shaped dict; ``service`` the validated model. Overrides merge
one level deep (``failback={"steps": [100]}`` keeps the other failback keys).
"""

from __future__ import annotations

from typing import Any

from trafficflip.config.schema import ServiceConfig

PRIMARY_TARGET, DR_TARGET = "192.0.2.10", "198.51.100.20"


def site(name: str, target: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "targets": [target],
        "checks": [{"type": "tcp", "address": f"127.0.0.1:{port}"}],
        **extra,
    }


def service_data(name: str = "www", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "provider": "aws",
        "zone": "example.com.",
        "record": f"{name}.example.com.",
        "type": "A",
        "ttl": 30,
        "failback": {"stabilize": 120, "steps": [10, 50, 100], "step_duration": 60},
        "sites": [site("primary", PRIMARY_TARGET, 1), site("dr", DR_TARGET, 2)],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def service(name: str = "www", **overrides: Any) -> ServiceConfig:
    return ServiceConfig(**service_data(name, **overrides))
