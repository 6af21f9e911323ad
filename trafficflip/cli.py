"""trafficflip: health-checked traffic failover for DNS records and load-balancer pools.

Exit codes: 0 success; 1 a command failed (a --live check, a refused operator command, a
state file in use by another run); 2 a configuration problem, printed as key.path: reason."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from trafficflip import __version__
from trafficflip.backend.provider import Provider
from trafficflip.config.loader import Config, load_config
from trafficflip.decision.commands import (
    COMMANDS,
    CommandError,
    CommandResult,
    CommandSpec,
    validate_reason,
)
from trafficflip.decision.maintenance import requested_until
from trafficflip.decision.model import EventKind, JournalEntry, ServiceState, Status
from trafficflip.decision.plan import Plan
from trafficflip.errors import ConfigError
from trafficflip.logs import setup_logging
from trafficflip.operations.status import (
    Phase,
    Summary,
    clock_text,
    known_services,
    phase,
    plural,
    severity,
    summarize,
    table,
    waits_for,
)
from trafficflip.operations.views import (
    JOURNAL_KEEP,
    ServiceView,
    journal_view,
    stored_view,
)
from trafficflip.runtime import eventloop
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.memory import freeze_startup_objects
from trafficflip.runtime.monitor import ProbeJob
from trafficflip.runtime.probes import Prober
from trafficflip.runtime.reload import Reloader
from trafficflip.runtime.scheduler import Runner
from trafficflip.runtime.state import (
    SqliteStateStore,
    StateLock,
    StateLocked,
    StateStore,
    open_store,
    open_store_read_only,
)

if TYPE_CHECKING:
    from trafficflip.cluster.store import EtcdStateStore

EXIT_CONFIG = 2
# Extra probes a preview may spend on inconclusive results before it reports a check undecided.
PREVIEW_RETRIES = 5
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
    print(f"config OK: {plural(len(config.services), 'service')}")
    if args.live:
        print("\n".join(_verified_live(config)))
    return 0


def _verified_live(config: Config) -> list[str]:
    """What ``--live`` proved, per provider: its ``check_live`` contract, or a read."""
    lines = []
    for name, spec in config.providers.items():
        count = plural(sum(s.provider == name for s in config.services), "service")
        hook = spec.cls.check_live
        if hook is Provider.check_live:
            what = "the records of every service were read"
        else:
            first = (inspect.getdoc(hook) or "").split("\n")[0].rstrip(".")
            what = first[:1].lower() + first[1:]
        lines.append(f"live OK: provider {name} ({spec.cls.TYPE}, {count}): {what}")
    return lines


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
    # One run per state file; in cluster mode the state is etcd's and the leader is elected.
    lock = StateLock("sqlite://" if config.settings.cluster else config.settings.state)
    try:
        lock.acquire()
    except StateLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        eventloop.run(serve(config, args.config))  # uvloop when installed: less CPU per probe
    finally:
        lock.release()
    return 0


async def serve(config: Config, path: str | None = None) -> None:
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
    settings = config.settings
    if settings.cluster is not None:
        from trafficflip.cluster import api as cluster_api
        from trafficflip.cluster.node import start_cluster

        node, engine = await start_cluster(config, settings.cluster, build_providers(config))
        engine.readiness.append(node.not_ready_reasons)
        store = node.store
    else:
        store = open_store(settings.state)
        engine = Engine(config.services, store, build_providers(config), retention=settings.journal)
    runner = Runner(
        engine,
        Prober(),
        reconcile_interval=settings.reconcile_interval,
        probe_workers=settings.probe_workers,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    if runner.workers is not None:
        engine.readiness.append(runner.workers.not_ready_reasons)
    metrics = Metrics(engine, runner, [target.name for target in settings.notify])
    if node is not None:
        runner.components.insert(0, node)
        cluster_api.register_metrics(metrics.registry, node)
    runner.components.append(Notifier(config.settings.notify, engine, counted=metrics.notified))
    reloader = Reloader(
        path,
        config,
        engine,
        build_providers,
        lambda: asyncio.get_running_loop().create_task(runner.sync_probes()),
    )
    if api_config.enabled:
        app = create_app(engine, runner, metrics, tokens, api_config, reload=reloader.reload)
        if node is not None:
            cluster_api.cluster_routes(app, node)
        runner.components.append(ApiServer(app, api_config.listen))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    freeze_startup_objects()  # short collector pauses: probes stay on time (runtime/memory.py)
    try:
        await runner.run()
    finally:
        store.close()


def cmd_plan(args: argparse.Namespace) -> int:
    """Exit 1 when a provider could not be read: its plan is unknown, not empty."""
    config = load_config(args.config)
    setup_logging("WARNING", config.settings.log_format)
    text, unread = asyncio.run(preview_plan(config))
    print(text)
    if unread:
        print(f"error: provider {', '.join(unread)} could not be read", file=sys.stderr)
        return 1
    return 0


async def preview_plan(config: Config) -> tuple[str, list[str]]:
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
    engine = Engine(config.services, scratch, build_providers(config), read_only=True)
    prober = Prober()

    async def settle(key: str, job: ProbeJob) -> None:
        # rise probes prove a site up, fall prove it down: a dead site needs fall of them.
        # An inconclusive probe (our own loop overloaded) counts neither way: probe again.
        needed = max(job.health.rise, job.health.fall)
        conclusive = 0
        for _ in range(needed + PREVIEW_RETRIES):
            result = await prober.probe(job.check, job.health.timeout)
            engine.observe(key, result)
            conclusive += not result.inconclusive
            if conclusive >= needed:
                return

    await asyncio.gather(*(settle(key, job) for key, job in engine.jobs.items()))
    await prober.close()
    plans = await engine.converge(list(engine.services), apply=False)
    errors = {
        name: engine.provider_status[name].error for name in engine.providers if name not in plans
    }
    for name, plan in plans.items():
        if not plan.changes:
            # An empty plan is made without reading when nothing is decided yet (every site
            # down at start): read, so that "No changes" is never said of an unread backend.
            problem = await _read_problem(engine, name)
            if problem:
                errors[name] = problem
    for provider in engine.providers.values():
        await provider.close()
    return _render_preview(engine, plans, errors), sorted(errors)


async def _read_problem(engine: Engine, provider: str) -> str | None:
    services = [s.config for s in engine.services.values() if s.config.provider == provider]
    try:
        await engine.providers[provider].read(services)
    except Exception as exc:  # whatever the backend raised, the plan is unknown
        return str(exc)
    return None


def _render_preview(engine: Engine, plans: Mapping[str, Plan], errors: Mapping[str, str]) -> str:
    lines = []
    undecided = [
        f"  {engine.jobs[key].label}: {health.reason}"
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
        text = f"error: {errors[name]}" if name in errors or plan is None else str(plan)
        lines.append(f"provider {name}:\n{text}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """The fleet summary, then services that are not normal (every one with ``--all``), then
    the journal; from a running instance's API with ``--api``, else from the state store."""
    if args.api:
        fetched = _status_from_api(args)
        if isinstance(fetched, int):
            return fetched
        summary, views, journal = fetched
    else:
        summary, views, journal = _status_from_store(args)
    if args.json:
        print(
            json.dumps(
                {
                    "summary": dataclasses.asdict(summary),
                    "services": [v.model_dump(mode="json", exclude={"journal"}) for v in views],
                    "journal": journal,
                },
                indent=2,
            )
        )
        return 0
    print(render_status(summary, views, journal, show_all=args.all))
    return 0


def render_status(
    summary: Summary,
    views: Sequence[ServiceView],
    journal: Sequence[Mapping[str, Any]],
    *,
    show_all: bool,
) -> str:
    ordered = sorted(views, key=lambda v: severity(v.phase))
    shown = ordered if show_all else [v for v in ordered if v.phase != "normal"]
    lines = [summary.line()]
    if shown:
        lines.append(table([v.row() for v in shown]))
    hidden = len(ordered) - len(shown)
    if hidden:
        lines.append(f"({plural(hidden, 'normal service')} not listed; --all lists them)")
    for entry in journal:
        lines.append(
            f"{clock_text(entry['at'])} {entry['service']} {entry['kind']}: {entry['message']}"
        )
    return "\n".join(lines)


def _status_from_store(
    args: argparse.Namespace,
) -> tuple[Summary, list[ServiceView], list[dict[str, Any]]]:
    # Reading the state needs no provider settings (nor their secrets), and creates nothing.
    config = load_config(args.config, providers=False)
    if config.settings.cluster is not None:
        from trafficflip.cluster.etcd import EtcdError

        try:
            return _status_from(_command_store(config), config, args)
        except EtcdError as exc:
            raise SystemExit(f"cannot read the cluster's state from etcd: {exc}") from None
    store = open_store_read_only(config.settings.state) or SqliteStateStore(":memory:")
    return _status_from(store, config, args)


def _status_from(
    store: SqliteStateStore | EtcdStateStore, config: Config, args: argparse.Namespace
) -> tuple[Summary, list[ServiceView], list[dict[str, Any]]]:
    """The status from ``store``: SQLite's state file, or etcd in cluster mode (the
    leader's; the state file is not used there)."""
    now = time.time()
    views = []
    if config.settings.cluster is not None:
        # etcd's journal is not kept per service: one read, not one whole read per service.
        histories: dict[str, list[JournalEntry]] = {}
        for entry in store.journal(limit=JOURNAL_KEEP * len(config.services)):
            histories.setdefault(entry.service, []).append(entry)
    for service in config.services:
        state = store.load(service.name)
        if config.settings.cluster is not None:
            entries = histories.get(service.name, [])[-JOURNAL_KEEP:]
        else:
            entries = store.journal(service.name, limit=JOURNAL_KEEP)
        history = [journal_view(e) for e in entries]
        now_phase = Phase("never run") if state is None else phase(service, state, None, None)
        change = store.last_change(service.name)
        views.append(stored_view(service, state or ServiceState(), history, change, now_phase, now))
    journal = [vars(e) for e in store.journal(limit=args.journal)] if args.journal else []
    store.close()
    failovers = [e.at for v in views for e in v.journal if e.kind == EventKind.FAILOVER]
    summary = summarize((v.phase for v in views), None, max(failovers, default=None))
    return summary, views, journal


def _status_from_api(
    args: argparse.Namespace,
) -> tuple[Summary, list[ServiceView], list[dict[str, Any]]] | int:
    response = _api_call("GET", args.api, "/api/v1/services", params={"journal": args.journal})
    if response.status_code != 200:
        return _api_error(response)
    views = [ServiceView.model_validate(v) for v in response.json()]
    response = _api_call("GET", args.api, "/api/v1/summary")
    if response.status_code != 200:
        return _api_error(response)
    data = response.json()
    summary = Summary(data["services"], data["phases"], data["checks_down"], data["last_failover"])
    entries = sorted((e.model_dump() for v in views for e in v.journal), key=lambda e: e["at"])
    return summary, views, entries[-args.journal :] if args.journal else []


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
    if response.status_code == 401 and not os.environ.get(API_TOKEN_ENV):
        detail = f"{detail}: set {API_TOKEN_ENV} to a token of the instance (api.tokens)"
    print(f"error: {response.status_code} {detail}", file=sys.stderr)
    return 1


def _command_via_api(
    spec: CommandSpec, args: argparse.Namespace, payload: dict[str, object]
) -> int:
    path = f"/api/v1/services/{args.service}/{spec.name}"
    response = _api_call("POST", args.api, path, json=payload)
    if response.status_code != 200:
        return _api_error(response)
    answer = response.json()
    note = f"; {answer['note']}" if answer.get("note") else ""
    print(f"{spec.name} {args.service}: {answer['result']}{note}")
    return 0


def command_handler(spec: CommandSpec) -> Callable[[argparse.Namespace], int]:
    """The CLI side of one operator command: validate, then submit through the API or the
    state store, and say what became of it."""

    def handler(args: argparse.Namespace) -> int:
        try:
            reason = validate_reason(args.reason)
        except CommandError as exc:
            print(f"--reason: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        payload: dict[str, object] = {"reason": reason} if reason else {}
        if spec.site_arg:
            payload[spec.site_arg] = getattr(args, spec.site_arg)
        if spec.expires:
            try:
                payload.update(maintenance_end(args.for_, args.until))
                requested_until(spec.name, payload, time.time())  # the intake's own check
            except CommandError as exc:
                # The intake names its keys (for, until); here they are options.
                print(re.sub(r"^(for|until): ", r"--\1: ", str(exc)), file=sys.stderr)
                return EXIT_CONFIG
        if args.api:
            return _command_via_api(spec, args, payload)
        config = load_config(args.config, providers=False)
        names = [s.name for s in config.services]
        if args.service not in names:
            # Exit 1 like any refused command (and like the --api path's 404).
            known = known_services(names)
            print(f"error: unknown service {args.service!r}{known}", file=sys.stderr)
            return 1
        store = _command_store(config)
        command_id = store.submit(args.service, spec.name, payload, source="cli")
        text = _wait_for_result(store, command_id, args.wait)
        store.close()
        if text is None:
            print(f"{spec.name} {args.service}: queued; a running instance takes it next tick")
            return 0
        result = CommandResult.decode(text)
        note = waits_for(spec.name, config.settings.service(args.service)) if result.ok else ""
        print(f"{spec.name} {args.service}: {result}{f'; {note}' if note else ''}")
        return 0 if result.ok else 1

    return handler


def maintenance_end(duration: str | None, until: str | None) -> dict[str, object]:
    """``--for``/``--until`` as command arguments. ``--until`` is read on this machine's
    wall clock: ``HH:MM`` is its next occurrence in local time, an ISO 8601 time without
    an offset is local time; either is sent as epoch seconds."""
    if duration is not None:
        return {"for": duration}
    if until is None:
        return {}
    now = datetime.now().astimezone()
    try:
        if match := re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", until):
            hour, minute, second = (int(part or 0) for part in match.groups())
            moment = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
            if moment <= now:
                moment += timedelta(days=1)
        else:
            moment = datetime.fromisoformat(until)
    except ValueError:
        raise CommandError(f"--until: {until!r} is not HH:MM or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return {"until": moment.timestamp()}


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


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask a running instance to re-read its configuration (as SIGHUP does), through its API;
    exit 1 when it refused the new one (the running configuration stays)."""
    if not args.api:
        print(
            f"error: give --api URL (or set {API_URL_ENV}), or send the process SIGHUP",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    body = {"allow_removal": True} if args.allow_removal else {}
    response = _api_call("POST", args.api, "/api/v1/reload", json=body)
    if response.status_code == 400:
        answer = response.json()
        print(answer.get("result", "rejected"), file=sys.stderr)
        print("\n".join(answer.get("problems", [])), file=sys.stderr)
        return 1
    if response.status_code != 200:
        return _api_error(response)
    print(response.json()["result"])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import moto  # noqa: F401 - the demo's Route53 emulation, an optional extra
    except ImportError:
        print(
            "trafficflip demo runs on moto's Route53 emulation, which is not installed: "
            "pip install 'trafficflip[demo]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from trafficflip.demo import run_demo

    return int(run_demo())


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="trafficflip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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

    status = add("status", cmd_status, "the fleet summary, services not normal, the journal")
    add_api(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--all", action="store_true", help="list normal services too")
    status.add_argument(
        "--journal",
        type=int,
        default=10,
        choices=range(JOURNAL_KEEP + 1),
        metavar="N",
        help=f"journal lines to show (0-{JOURNAL_KEEP})",
    )
    for spec in COMMANDS.values():
        add_command(add(spec.name, command_handler(spec), spec.summary), spec, add_api)
    reload = sub.add_parser("reload", help="make a running instance re-read its configuration")
    reload.set_defaults(handler=cmd_reload)
    add_api(reload)
    reload.add_argument(
        "--allow-removal",
        action="store_true",
        help="take a configuration that removes services (refused otherwise: a file read "
        "while being written lists only the services before the cut)",
    )
    add("demo", cmd_demo, "run a self-contained failover demo on loopback")
    return top


def add_command(
    command: argparse.ArgumentParser,
    spec: CommandSpec,
    add_api: Callable[[argparse.ArgumentParser], None],
) -> None:
    """An operator command's arguments, from its entry in the command table."""
    add_api(command)
    command.add_argument("service")
    if spec.site_arg == "to":
        command.add_argument("--to", required=True, help="the site to serve from")
    elif spec.site_arg is not None:
        command.add_argument(spec.site_arg)
    command.add_argument(
        "--reason", default="", help="why, journaled and notified (one line of text)"
    )
    if spec.expires:
        end = command.add_mutually_exclusive_group()
        end.add_argument(
            "--for",
            dest="for_",
            metavar="DURATION",
            help="end by itself after this long (30m, 2h, 7d; at most 366d)",
        )
        end.add_argument(
            "--until",
            metavar="TIME",
            help="end by itself at this wall-clock time: HH:MM (next, local time) or ISO 8601",
        )
    command.add_argument(
        "--wait",
        type=float,
        default=COMMAND_WAIT,
        help="seconds to wait for a running instance to take it (without --api)",
    )


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
