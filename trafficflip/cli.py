"""The ``trafficflip`` command. Configuration problems exit 2 with ``key.path: reason`` lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from trafficflip.backend.provider import Provider
from trafficflip.config.loader import Config, load_config
from trafficflip.decision.model import Status
from trafficflip.decision.plan import Plan
from trafficflip.errors import ConfigError
from trafficflip.logs import setup_logging
from trafficflip.operations.status import service_status, table
from trafficflip.operations.views import describe_check
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.monitor import ProbeJob
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.scheduler import Runner
from trafficflip.runtime.state import (
    SqliteStateStore,
    StateStore,
    open_store,
    open_store_read_only,
)

if TYPE_CHECKING:
    from trafficflip.cluster.store import EtcdStateStore

EXIT_CONFIG = 2
COMMAND_WAIT = 5.0
API_URL_ENV, API_TOKEN_ENV = "TRAFFICFLIP_API_URL", "TRAFFICFLIP_API_TOKEN"
API_TIMEOUT = 10.0


def build_providers(config: Config) -> dict[str, Provider]:
    return {name: spec.cls.create(name, spec.config) for name, spec in config.providers.items()}


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.live:
        problems = asyncio.run(_live_problems(config))
        if problems:
            print("\n".join(problems))
            return 1
    print(f"config OK: {len(config.services)} services")
    return 0


async def _live_problems(config: Config) -> list[str]:
    problems = []
    for name, provider in build_providers(config).items():
        services = [s for s in config.services if s.provider == name]
        problems.extend(await provider.check_live(services))
        await provider.close()
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(config.settings.log_level, config.settings.log_format)
    asyncio.run(serve(config))
    return 0


async def serve(config: Config) -> None:
    """Run the scheduler, the notifier and the API in this loop until SIGTERM or SIGINT."""
    # Imported here: the API pulls in FastAPI, which the other commands do not need.
    from trafficflip.operations.api import ApiServer, create_app, load_tokens
    from trafficflip.operations.metrics import Metrics
    from trafficflip.operations.notify import Notifier

    api_config = config.settings.api
    tokens = load_tokens(api_config)  # a bad tokens file is a ConfigError before anything runs
    node = None
    store: StateStore
    engine: Engine
    if config.settings.cluster is not None:
        from trafficflip.cluster import api as cluster_api
        from trafficflip.cluster.node import start_cluster

        node, engine = await start_cluster(config, config.settings.cluster, build_providers(config))
        store = node.store
    else:
        store = open_store(config.settings.state)
        engine = Engine(config, store, build_providers(config))
    runner = Runner(engine, Prober(), reconcile_interval=config.settings.reconcile_interval)
    metrics = Metrics(engine, runner)
    if node is not None:
        runner.components.insert(0, node)
        cluster_api.register_metrics(metrics.registry, node)
    runner.components.append(Notifier(config.settings.notify, engine, counted=metrics.notified))
    if api_config.enabled:
        app = create_app(engine, runner, metrics, tokens)
        if node is not None:
            cluster_api.cluster_routes(app, node)
        runner.components.append(ApiServer(app, api_config.listen))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    try:
        await runner.run()
    finally:
        store.close()


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging("WARNING", config.settings.log_format)
    print(asyncio.run(preview_plan(config)))
    return 0


async def preview_plan(config: Config) -> str:
    """Probe every check until its status is decided, decide on a scratch copy of the stored
    state, and diff against the backends. Read-only by construction: the engine's providers
    refuse every apply, and the stored state is opened read-only (never created)."""
    scratch = SqliteStateStore(":memory:")
    stored = open_store_read_only(config.settings.state)
    if stored is not None:
        for service in config.services:
            state = stored.load(service.name)
            if state is not None:
                scratch.save(service.name, state, [])
        stored.close()
    engine = Engine(config, scratch, build_providers(config), read_only=True)
    prober = Prober()

    async def settle(key: str, job: ProbeJob) -> None:
        # rise probes prove a site up, fall prove it down: a dead site needs fall of them.
        for _ in range(max(job.health.rise, job.health.fall)):
            engine.observe(key, await prober.probe(job.check, job.health.timeout))

    await asyncio.gather(*(settle(key, job) for key, job in engine.jobs.items()))
    await prober.close()
    plans = await engine.converge(list(engine.services), apply=False)
    for provider in engine.providers.values():
        await provider.close()
    return _render_preview(engine, plans)


def _render_preview(engine: Engine, plans: Mapping[str, Plan]) -> str:
    lines = []
    undecided = [
        f"  {describe_check(engine.jobs[key].check)}: {health.reason}"
        for key, health in engine.checks.items()
        if health.status is Status.UNKNOWN
    ]
    if undecided:
        lines += ["Checks still undecided (no traffic change is based on them):", *undecided]
    if engine.previewed:
        lines.append("Decisions (preview, nothing applied):")
        lines += [f"  {event.kind} {name}: {event.message}" for name, event in engine.previewed]
    for name in engine.providers:
        plan = plans.get(name)
        status = engine.provider_status[name]
        text = str(plan) if plan is not None else f"error: {status.error}"
        lines.append(f"provider {name}:\n{text}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    if args.api:
        return _status_from_api(args)
    config = load_config(args.config)
    store = open_store(config.settings.state)
    now = time.time()
    rows = []
    for service in config.services:
        state = store.load(service.name)
        if state is not None:
            rows.append(service_status(service, state, store, now))
        else:
            rows.append(
                {"name": service.name, "phase": "never run", "shares": {}, "last_change": None}
            )
    if args.json:
        journal = [vars(e) for e in store.journal(limit=args.journal)]
        print(json.dumps({"services": rows, "journal": journal}, indent=2))
    else:
        print(table(rows, now))
        for entry in store.journal(limit=args.journal):
            stamp = time.strftime("%H:%M:%S", time.localtime(entry.at))
            print(f"{stamp} {entry.service} {entry.kind}: {entry.message}")
    store.close()
    return 0


def _status_from_api(args: argparse.Namespace) -> int:
    response = _api_call("GET", args.api, "/api/v1/services", params={"journal": args.journal})
    if response.status_code != 200:
        return _api_error(response)
    views: list[dict[str, Any]] = response.json()
    journal = sorted((e for v in views for e in v.pop("journal")), key=lambda e: e["at"])
    journal = journal[-args.journal :] if args.journal else []
    if args.json:
        print(json.dumps({"services": views, "journal": journal}, indent=2))
        return 0
    print(table(views, time.time()))
    for entry in journal:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
        print(f"{stamp} {entry['service']} {entry['kind']}: {entry['message']}")
    return 0


def _api_call(method: str, base: str, path: str, **kwargs: Any) -> httpx.Response:
    token = os.environ.get(API_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.request(
            method, base.rstrip("/") + path, headers=headers, timeout=API_TIMEOUT, **kwargs
        )
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach the API at {base}: {exc}") from None


def _api_error(response: httpx.Response) -> int:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    print(f"error: {response.status_code} {detail}", file=sys.stderr)
    return 1


def _command_via_api(name: str, args: argparse.Namespace, payload: dict[str, str]) -> int:
    path = f"/api/v1/services/{args.service}/{name}"
    response = _api_call("POST", args.api, path, json=payload)
    if response.status_code != 200:
        return _api_error(response)
    print(f"{name} {args.service}: {response.json()['result']}")
    return 0


def command_handler(name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        payload = {
            k: v
            for k, v in (
                ("to", getattr(args, "to", None)),
                ("site", getattr(args, "site", None)),
                ("reason", args.reason),
            )
            if v
        }
        if args.api:
            return _command_via_api(name, args, payload)
        config = load_config(args.config)
        if args.service not in {s.name for s in config.services}:
            print(f"unknown service {args.service!r}", file=sys.stderr)
            return EXIT_CONFIG
        store = _command_store(config)
        command_id = store.submit(args.service, name, payload, source="cli")
        result = _wait_for_result(store, command_id, args.wait)
        store.close()
        if result is None:
            print(f"{name} {args.service}: queued; a running trafficflip takes it on its next tick")
            return 0
        print(f"{name} {args.service}: {result}")
        return 0 if result == "ok" else 1

    return handler


def _command_store(config: Config) -> SqliteStateStore | EtcdStateStore:
    if config.settings.cluster is not None:
        from trafficflip.cluster.node import open_command_store

        return open_command_store(config.settings.cluster)
    return open_store(config.settings.state)


def _wait_for_result(
    store: SqliteStateStore | EtcdStateStore, command_id: int, wait: float
) -> str | None:
    deadline = time.monotonic() + wait
    while True:
        result = store.command_result(command_id)
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(0.1)


def cmd_demo(args: argparse.Namespace) -> int:
    from trafficflip.demo import run_demo  # the demo pulls in moto, only a test dependency

    return int(run_demo())


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="trafficflip", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", help="YAML file (default: $TRAFFICFLIP_CONFIG)")
        command.set_defaults(handler=handler)
        return command

    add("run", cmd_run, "run the service")
    add("check-config", cmd_check_config, "validate the configuration").add_argument(
        "--live", action="store_true", help="also check that every provider object exists"
    )
    add("plan", cmd_plan, "show what would change, without changing it")

    def add_api(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--api",
            default=os.environ.get(API_URL_ENV),
            metavar="URL",
            help=f"ask a running instance's API (default: ${API_URL_ENV}); "
            f"the token comes from ${API_TOKEN_ENV}",
        )

    status = add("status", cmd_status, "show decisions and the journal")
    add_api(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--journal", type=int, default=10, help="journal lines to show")
    for name, help_text in (
        ("failover", "pin traffic to a site (planned maintenance)"),
        ("failback", "release a pin or drain and approve failback"),
        ("hold", "freeze automatic changes"),
        ("release", "resume automatic changes"),
        ("promote", "make a site the new primary"),
        ("drain", "move traffic away from a site"),
    ):
        command = add(name, command_handler(name), help_text)
        add_api(command)
        command.add_argument("service")
        if name == "failover":
            command.add_argument("--to", required=True, help="the site to serve from")
        if name in ("promote", "drain"):
            command.add_argument("site")
        command.add_argument("--reason", default="")
        command.add_argument(
            "--wait",
            type=float,
            default=COMMAND_WAIT,
            help="seconds to wait for a running instance to take it",
        )
    add("demo", cmd_demo, "run a self-contained failover demo on loopback")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
