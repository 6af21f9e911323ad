"""The haproxy provider against real HAProxy processes on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from providers.haproxy import HaproxyConfig, HaproxyProvider, split_responses
from tests.haproxy_server import HaproxyServer
from tests.support import ROOT, HttpSite, trafficflip_command
from trafficflip.config.loader import load_config
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Plan, diff, make_plan, render
from trafficflip.errors import ConfigError, PermanentProviderError, TransientProviderError

SITES = {"primary": ["a1", "a2"], "standby": ["b1", "b2"]}


def make_service(backend: str = "be", sites: Mapping[str, list[str]] = SITES) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "name": "www",
            "provider": "lb",
            "backend": backend,
            "sites": [
                {"name": name, "targets": targets, "checks": [tcp_check()]}
                for name, targets in sites.items()
            ],
        }
    )


def tcp_check() -> dict[str, str]:
    return {"type": "tcp", "address": "127.0.0.1:9"}


def provider_for(*instances: dict[str, str], timeout: float = 2.0) -> HaproxyProvider:
    config = HaproxyConfig.model_validate(
        {"type": "haproxy", "instances": list(instances), "timeout": timeout}
    )
    return HaproxyProvider("lb", config)


def lagging(provider: HaproxyProvider) -> tuple[str, ...]:
    return provider.lagging_instances


async def plan_for(
    provider: HaproxyProvider, service: ServiceConfig, shares: Mapping[str, int]
) -> Plan:
    actual = (await provider.read([service]))[service.name]
    desired = render(service, shares, weighted=True)
    return make_plan(diff(service, desired, actual), {service.name: desired})


@pytest.fixture
def http_sites() -> Iterator[dict[str, HttpSite]]:
    sites = {name: HttpSite() for targets in SITES.values() for name in targets}
    for name, site in sites.items():
        site.body = name.encode()
        site.start()
    yield sites
    for site in sites.values():
        site.stop()


@pytest.fixture
def haproxy(http_sites: dict[str, HttpSite]) -> Iterator[HaproxyServer]:
    server = HaproxyServer(http_sites, tcp_api=True).start()
    yield server
    server.close()


async def test_apply_then_read_round_trips(haproxy: HaproxyServer) -> None:
    provider = provider_for({"socket": haproxy.socket})
    service = make_service()
    plan = await plan_for(provider, service, {"primary": 25, "standby": 75})
    assert plan.summary == "Creates=0, Updates=2, Deletes=0"
    await provider.apply(plan)
    assert haproxy.weights() == {"a1": 25, "a2": 25, "b1": 75, "b2": 75}
    read = (await provider.read([service]))["www"]
    assert read == (
        Answer("primary", frozenset({"a1", "a2"}), 25),
        Answer("standby", frozenset({"b1", "b2"}), 75),
    )
    assert not await plan_for(provider, service, {"primary": 25, "standby": 75})
    assert lagging(provider) == ()


async def test_a_site_without_share_gets_weight_zero(haproxy: HaproxyServer) -> None:
    provider = provider_for({"address": haproxy.address})
    service = make_service()
    await provider.apply(await plan_for(provider, service, {"primary": 100}))
    assert haproxy.weights() == {"a1": 100, "a2": 100, "b1": 0, "b2": 0}
    bodies = {haproxy.get()[1] for _ in range(8)}
    assert bodies == {"a1", "a2"}


async def test_restart_mid_ramp_is_drift_and_the_next_apply_restores(
    haproxy: HaproxyServer,
) -> None:
    provider = provider_for({"socket": haproxy.socket})
    service = make_service()
    shares = {"primary": 50, "standby": 50}
    await provider.apply(await plan_for(provider, service, shares))
    haproxy.restart()
    assert haproxy.weights() == {"a1": 1, "a2": 1, "b1": 1, "b2": 1}
    plan = await plan_for(provider, service, shares)
    assert plan.summary == "Creates=0, Updates=2, Deletes=0"
    assert lagging(provider) == (haproxy.socket,)
    await provider.apply(plan)
    assert haproxy.weights() == {"a1": 50, "a2": 50, "b1": 50, "b2": 50}
    assert lagging(provider) == ()


async def test_one_instance_down_the_other_is_updated_and_named(
    http_sites: dict[str, HttpSite],
) -> None:
    up = HaproxyServer(http_sites).start()
    down = HaproxyServer(http_sites).start()
    try:
        provider = provider_for({"socket": up.socket}, {"socket": down.socket})
        service = make_service()
        await provider.apply(await plan_for(provider, service, {"primary": 100}))
        down.stop()
        plan = await plan_for(provider, service, {"standby": 100})
        assert [c.after.weight for c in plan.changes if c.after] == [0, 100]
        with pytest.raises(TransientProviderError) as caught:
            await provider.apply(plan)  # the engine retries this with backoff
        assert str(caught.value) == (
            f"haproxy lb: {down.socket} lags (Connection refused); updated {up.socket}"
        )
        assert lagging(provider) == (down.socket,)
        assert up.weights() == {"a1": 0, "a2": 0, "b1": 100, "b2": 100}
        # Restarted with its configured weights: read names it until it is rewritten.
        down.start()
        plan = await plan_for(provider, service, {"standby": 100})
        assert lagging(provider) == (down.socket,)
        assert all(c.before and c.before.weight is None for c in plan.changes)
        await provider.apply(plan)
        assert down.weights() == up.weights()
        assert lagging(provider) == ()
    finally:
        up.close()
        down.close()


async def test_a_batch_is_one_session_per_instance(http_sites: dict[str, HttpSite]) -> None:
    """Three services in three backends: one read and one write session on each instance."""
    sites = {"primary": ["a1"], "standby": ["b1"]}
    backends = ("be", "api", "db")
    servers = {n: http_sites[n] for n in ("a1", "b1")}
    first = HaproxyServer(servers, extra_backends=backends[1:]).start()
    second = HaproxyServer(servers, extra_backends=backends[1:]).start()
    try:
        provider = provider_for({"socket": first.socket}, {"socket": second.socket})
        services = [
            make_service(b, sites).model_copy(update={"name": f"svc-{b}"}) for b in backends
        ]
        actual = await provider.read(services)
        desired = {s.name: render(s, {"standby": 100}, weighted=True) for s in services}
        changes = [c for s in services for c in diff(s, desired[s.name], actual[s.name])]
        await provider.apply(make_plan(changes, desired))
        assert [api.budget.spent for api in provider.apis] == [2, 2]
        for backend in backends:
            assert first.weights(backend) == second.weights(backend) == {"a1": 0, "b1": 100}
    finally:
        first.close()
        second.close()


async def test_every_instance_down_is_transient(haproxy: HaproxyServer) -> None:
    provider = provider_for({"socket": haproxy.socket})
    haproxy.stop()
    with pytest.raises(TransientProviderError, match="no instance reachable"):
        await provider.read([make_service()])


async def test_missing_backend_or_server_is_named_and_does_not_block_others(
    haproxy: HaproxyServer,
) -> None:
    provider = provider_for({"socket": haproxy.socket})
    good = make_service()
    nope = make_service(backend="nope").model_copy(update={"name": "api"})
    actual = await provider.read([good, nope])
    assert actual["api"] == ()
    desired = {s.name: render(s, {"standby": 100}, weighted=True) for s in (good, nope)}
    changes = [c for s in (good, nope) for c in diff(s, desired[s.name], actual[s.name])]
    with pytest.raises(PermanentProviderError) as caught:
        await provider.apply(make_plan(changes, desired))
    assert f"haproxy {haproxy.socket}: service api site standby: " in str(caught.value)
    assert "set server nope/b1 weight 100: No such backend." in str(caught.value)
    assert haproxy.weights() == {"a1": 0, "a2": 0, "b1": 100, "b2": 100}
    missing = make_service(sites={"primary": ["a1", "a9"], "standby": ["b1"]})
    problems = await provider.check_live([nope, missing])
    where = f"providers.lb: haproxy {haproxy.socket}:"
    assert problems == [
        f"{where} service api: no backend 'nope'",
        f"{where} service www: backend be has no server a9 (it has: a1, a2, b1, b2)",
    ]


async def test_a_refused_command_surfaces_haproxys_message(haproxy: HaproxyServer) -> None:
    provider = provider_for({"socket": haproxy.socket})
    service = make_service(sites={"primary": ["a1", "a9"], "standby": ["b1"]})
    desired = render(service, {"primary": 100}, weighted=True)
    plan = make_plan(diff(service, desired, []), {service.name: desired})
    refusal = "service www site primary: set server be/a9 weight 100: No such server"
    with pytest.raises(PermanentProviderError, match=refusal) as raised:
        await provider._apply(plan)
    assert raised.value.services == frozenset({"www"})  # the service the refusal is about
    assert haproxy.weights()["a1"] == 100  # HAProxy ran the line's other commands


async def test_check_live_reports_an_unreachable_instance(tmp_path: Path) -> None:
    provider = provider_for({"socket": str(tmp_path / "gone.sock")})
    [problem] = await provider.check_live([make_service()])
    assert problem.startswith(f"providers.lb: haproxy {tmp_path / 'gone.sock'}:")


async def test_a_static_algorithm_refusal_is_reported(http_sites: dict[str, HttpSite]) -> None:
    static = HaproxyServer(http_sites, balance="static-rr").start()
    try:
        provider = provider_for({"socket": static.socket})
        service = make_service()
        plan = await plan_for(provider, service, {"primary": 25, "standby": 75})
        with pytest.raises(PermanentProviderError, match="static LB algorithm"):
            await provider.apply(plan)
    finally:
        static.close()


def test_the_example_config_is_valid() -> None:
    config = load_config(str(ROOT / "config" / "haproxy.yaml"))
    assert [s.backend for s in config.services] == ["www"]


def test_split_responses_keeps_one_answer_per_command() -> None:
    assert split_responses("\n") == [""]
    assert split_responses("\n\n") == ["", ""]
    assert split_responses("No such server.\n\n\n") == ["No such server.", ""]


def test_validate_service_reports_key_paths() -> None:
    service = make_service(sites={"primary": ["a1", "bad name"], "standby": ["a1"]})
    service = service.model_copy(update={"backend": None})
    assert HaproxyProvider.validate_service(service, None) == [
        ("backend", "required for a haproxy service (the backend's name)"),
        ("sites[0].targets[1]", "'bad name' is not a HAProxy server name"),
        ("sites[1].targets[0]", "server a1 is already in site primary"),
    ]


@pytest.mark.parametrize("name", ["be\n", "be\nshow info", "be;x", "be x", "be/x", ""])
def test_names_must_match_whole(name: str) -> None:
    """A trailing newline once passed check-config and cut the runtime command line."""
    data = config_data({"type": "haproxy", "socket": "/s"})
    data["services"][0]["backend"] = name
    data["services"][0]["sites"][0]["targets"] = [name]
    with pytest.raises(ConfigError) as caught:
        load_config(data=data)
    assert caught.value.problems == [f"services[0].backend: {name!r} is not a HAProxy backend name"]
    data["services"][0]["backend"] = "be"
    with pytest.raises(ConfigError) as caught:
        load_config(data=data)
    assert caught.value.problems == [
        f"services[0].sites[0].targets[0]: {name!r} is not a HAProxy server name"
    ]


def test_another_adapters_key_is_unknown() -> None:
    data = config_data({"type": "haproxy", "socket": "/s"})
    data["services"][0]["listener_arn"] = "arn:x"
    with pytest.raises(ConfigError) as caught:
        load_config(data=data)
    assert caught.value.problems == ["services[0].listener_arn: unknown key"]


def config_data(provider: dict[str, Any]) -> dict[str, Any]:
    service = make_service().model_dump(mode="json", exclude_none=True)
    return {"providers": {"lb": provider}, "services": [service]}


@pytest.mark.parametrize(
    ("provider", "problem"),
    [
        ({"type": "haproxy"}, "providers.lb: needs the runtime API"),
        ({"type": "haproxy", "socket": "/s", "address": "127.0.0.1:1"}, "not both"),
        ({"type": "haproxy", "address": "localhost"}, "providers.lb.address: invalid address"),
        ({"type": "haproxy", "instances": [{}]}, "providers.lb.instances[0]: set socket"),
        ({"type": "haproxy", "socket": "/s", "timeout": "soon"}, "providers.lb.timeout: invalid"),
    ],
)
def test_provider_config_errors_name_the_key(provider: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data=config_data(provider))
    assert any(p.startswith(problem) or problem in p for p in caught.value.problems), caught.value


def test_a_service_without_backend_is_a_config_error() -> None:
    data = config_data({"type": "haproxy", "socket": "/s"})
    del data["services"][0]["backend"]
    with pytest.raises(ConfigError) as caught:
        load_config(data=data)
    assert caught.value.problems == [
        "services[0].backend: required for a haproxy service (the backend's name)"
    ]


def check_config(tmp_path: Path, data: dict[str, Any], *flags: str) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = subprocess.run(
        trafficflip_command("check-config", "--config", str(path), *flags),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout + result.stderr


def test_check_config_live_names_a_missing_server(haproxy: HaproxyServer, tmp_path: Path) -> None:
    data = config_data({"type": "haproxy", "socket": haproxy.socket})
    data["services"][0]["sites"][1]["targets"] = ["b1", "b7"]
    code, output = check_config(tmp_path, data, "--live")
    assert code == 1, output
    assert f"haproxy {haproxy.socket}: service www: backend be has no server b7" in output


def test_check_config_exits_2_without_socket_or_address(tmp_path: Path) -> None:
    code, output = check_config(tmp_path, config_data({"type": "haproxy"}))
    assert code == 2, output
    assert "providers.lb: needs the runtime API" in output
