"""The ``trafficflip`` command. Configuration problems exit 2 with ``key.path: reason`` lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence

from trafficflip.engine import Engine
from trafficflip.errors import ConfigError
from trafficflip.logs import setup_logging
from trafficflip.probes import Prober
from trafficflip.provider import Provider
from trafficflip.scheduler import Runner
from trafficflip.state import SqliteStateStore, open_store
from trafficflip.status import service_status, table
from trafficflip.validation import Config, load_config

EXIT_CONFIG = 2
COMMAND_WAIT = 5.0


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
    """Run until SIGTERM or SIGINT."""
    store = open_store(config.settings.state)
    engine = Engine(config, store, build_providers(config))
    runner = Runner(engine, Prober(), reconcile_interval=config.settings.reconcile_interval)
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
    """Probe every check ``rise`` times, decide, and diff against the backends. Nothing is
    written: decisions go to an in-memory copy of the stored state."""
    stored = open_store(config.settings.state)
    scratch = SqliteStateStore(":memory:")
    for service in config.services:
        state = stored.load(service.name)
        if state is not None:
            scratch.save(service.name, state, [])
    stored.close()
    engine = Engine(config, scratch, build_providers(config))
    prober = Prober()
    for key, job in engine.jobs.items():
        for _ in range(job.health.rise):
            engine.observe(key, await prober.probe(job.check, job.health.timeout))
    await prober.close()
    plans = await engine.converge(list(engine.services), apply=False)
    for provider in engine.providers.values():
        await provider.close()
    lines = []
    for name in engine.providers:
        plan = plans.get(name)
        status = engine.provider_status[name]
        text = str(plan) if plan is not None else f"error: {status.error}"
        lines.append(f"provider {name}:\n{text}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
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


def command_handler(name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        if args.service not in {s.name for s in config.services}:
            print(f"unknown service {args.service!r}", file=sys.stderr)
            return EXIT_CONFIG
        payload = {
            k: v
            for k, v in (
                ("to", getattr(args, "to", None)),
                ("site", getattr(args, "site", None)),
                ("reason", args.reason),
            )
            if v
        }
        store = open_store(config.settings.state)
        command_id = store.submit(args.service, name, payload, source="cli")
        result = _wait_for_result(store, command_id, args.wait)
        store.close()
        if result is None:
            print(f"{name} {args.service}: queued; a running trafficflip takes it on its next tick")
            return 0
        print(f"{name} {args.service}: {result}")
        return 0 if result == "ok" else 1

    return handler


def _wait_for_result(store: SqliteStateStore, command_id: int, wait: float) -> str | None:
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
    status = add("status", cmd_status, "show decisions and the journal")
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
