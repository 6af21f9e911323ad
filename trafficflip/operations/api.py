"""The HTTP API, status page and metrics, served by uvicorn in the service's own event loop.

Every read is served from the ``SnapshotKeeper``'s current snapshot, never computed from the
engine per request, so a busy client cannot delay probes or a failover. Reads are open unless
``api.read_auth`` is set (then only ``/healthz`` and ``/readyz``'s status code are); every
mutating call needs ``Authorization: Bearer <token>`` with its scope (``auth.py``) and goes
through the operator command path, so it is journaled with its reason and the token's name.
With no token configured the mutating endpoints answer 403: they are off, never open.
``api.allowed_hosts`` checks the Host header (a DNS-rebinding page in a browser on the same
host cannot reach the API); connections, request heads and bodies are bounded (``limits.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from trafficflip.config.schema import NAME_PATTERN, ApiConfig, split_host_port
from trafficflip.decision.commands import (
    COMMANDS,
    REASON_MAX,
    CommandSpec,
)
from trafficflip.errors import ConfigError, TrafficflipError
from trafficflip.operations.auth import (
    READ,
    Admin,
    Operator,
    TokenAuth,
    scrapers,
)

# Imported from here by the CLI and the cluster's routes.
from trafficflip.operations.auth import load_tokens as load_tokens
from trafficflip.operations.auth import readers as readers
from trafficflip.operations.limits import BodyLimit, connection_cap, server_limits
from trafficflip.operations.metrics import Metrics
from trafficflip.operations.page import render_page
from trafficflip.operations.snapshot import SnapshotKeeper
from trafficflip.operations.status import known_services, waits_for
from trafficflip.operations.views import JOURNAL_KEEP, ServiceView
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.scheduler import TICK_INTERVAL, Runner

log = logging.getLogger("trafficflip.operations.api")
# The scheduler ticks every TICK_INTERVAL; this many missed ticks means it is stuck.
STALLED_TICKS = 10
JOURNAL_DEFAULT, JOURNAL_MAX = 10, JOURNAL_KEEP
# A scrape within this many seconds of the last one gets the same text.
SCRAPE_MAX_AGE = 1.0
# Seconds uvicorn waits for open requests when the service stops.
SHUTDOWN_GRACE = 2
# One line without control characters (as commands.REASON_PATTERN), nor the characters that
# break a line or reorder it for a Unicode-aware reader of the log: NEL and the other C1
# controls, the line and paragraph separators, the bidirectional overrides and isolates.
REASON_TEXT = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"
REASON = Field("", max_length=REASON_MAX, pattern=REASON_TEXT)


class Error(BaseModel):
    detail: str


class Probe(BaseModel):
    status: str
    reasons: list[str] = []


class CommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    reason: str = REASON
    for_: str | float | None = Field(
        None,
        alias="for",
        description="hold, failover and drain only: end by itself after this long (30m, 2h)",
    )
    until: str | float | None = Field(
        None,
        description="hold, failover and drain only: end by itself at this wall-clock time "
        "(epoch seconds or ISO 8601 with an offset)",
    )


class FailoverBody(CommandBody):
    to: str = Field(description="the site to serve from", pattern=NAME_PATTERN, max_length=64)


class SiteBody(CommandBody):
    site: str = Field(pattern=NAME_PATTERN, max_length=64)


BODIES: dict[str | None, type[CommandBody]] = {
    None: CommandBody,
    "to": FailoverBody,
    "site": SiteBody,
}


class CommandResponse(BaseModel):
    command: str
    result: str = Field(description="ok")
    note: str = Field(
        "", description="what a taken command still waits for (a drain: stabilize, the steps)"
    )
    service: ServiceView


class SummaryView(BaseModel):
    built_at: float = Field(description="when the snapshot was built (epoch seconds)")
    services: int
    phases: dict[str, int]
    checks_down: int
    last_failover: float | None
    line: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text}
    for code, text in (
        (400, "the body is not JSON"),
        (409, "the command does not apply to this service (it has no such site)"),
        (503, "the command could not be taken now (cluster: etcd did not queue it)"),
        (401, "no token or a wrong one"),
        (403, "mutating endpoints are off"),
        (404, "unknown service"),
        (413, "the body is larger than api.max_body"),
    )
}
ServiceName = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=64)]
Journal = Annotated[int, Query(ge=0, le=JOURNAL_MAX)]


def create_app(
    engine: Engine,
    runner: Runner,
    metrics: Metrics,
    tokens: Mapping[str, str],
    config: ApiConfig | None = None,
    snapshots: SnapshotKeeper | None = None,
    reload: Callable[[bool], list[str]] | None = None,
) -> FastAPI:
    """The application over a running engine (the routes are in ``_routes``). Without
    ``snapshots`` it keeps its own, started and stopped by the ``ApiServer``. ``reload``
    re-reads the configuration and returns its problems (``POST /api/v1/reload``)."""
    config = config or ApiConfig()
    snapshots = snapshots or SnapshotKeeper(engine)
    # With read_auth the OpenAPI document (every route, the command table) is a read too.
    openapi_url = None if config.read_auth else "/openapi.json"
    app = FastAPI(
        title="trafficflip", version="1", docs_url=None, redoc_url=None, openapi_url=openapi_url
    )
    app.state.snapshots = snapshots
    metrics.read_from(lambda: snapshots.current)
    app.state.auth = TokenAuth(tokens, config.scopes)
    app.state.read_auth = config.read_auth
    if openapi_url is None:
        _openapi_route(app)
    if config.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts)
    app.add_middleware(BodyLimit, limit=config.max_body)
    _routes(app, engine, runner, metrics, snapshots)
    _command_routes(app, engine, snapshots)
    if reload is not None:
        _reload_route(app, reload)
    return app


def _openapi_route(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=readers(app))
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())


class ReloadResult(BaseModel):
    result: str
    problems: list[str] = []


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Take a configuration that removes services (docs/operations.md, "The process"); strict:
    # 0 or "yes" must not pass for a yes to something this destructive.
    allow_removal: StrictBool = False


def _reload_route(app: FastAPI, reload: Callable[[bool], list[str]]) -> None:
    @app.post(
        "/api/v1/reload",
        response_model=ReloadResult,
        responses={
            400: {
                "model": ReloadResult | Error,
                "description": "the configuration was rejected (problems), or the body is not JSON",
            },
            401: ERRORS[401],
            403: ERRORS[403],
        },
        summary="re-read the configuration file and the environment",
    )
    async def reload_config(
        who: Admin, response: Response, request: ReloadRequest | None = None
    ) -> ReloadResult:
        """A valid configuration takes effect at once; an invalid one changes nothing and
        its problems come back as ``key.path: reason``. One that removes services needs
        ``{"allow_removal": true}`` (unless the removal is within reload_removal_share)."""
        problems = reload(request is not None and request.allow_removal)
        log.info("api_reload by=%s problems=%d", who, len(problems))
        if problems:
            response.status_code = 400
            return ReloadResult(
                result="rejected: the running configuration stays", problems=problems
            )
        return ReloadResult(result="reloaded")


class Scrapes:
    """``/metrics`` rendered at most once per ``max_age``, in a thread, shared by the
    requests that arrive meanwhile: at 500 services a render takes a second of CPU
    (bench/operator_snapshot.py), which two eager scrapers must not multiply."""

    def __init__(self, metrics: Metrics, max_age: float = SCRAPE_MAX_AGE) -> None:
        self.metrics, self.max_age = metrics, max_age
        self._last: tuple[float, tuple[bytes, str]] | None = None
        self._running: asyncio.Future[tuple[bytes, str]] | None = None

    async def get(self) -> tuple[bytes, str]:
        if self._last is not None and time.monotonic() - self._last[0] < self.max_age:
            return self._last[1]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self.metrics.exposition))
        result = await asyncio.shield(self._running)
        self._last = (time.monotonic(), result)
        return result


def _routes(
    app: FastAPI, engine: Engine, runner: Runner, metrics: Metrics, snapshots: SnapshotKeeper
) -> None:
    scrapes = Scrapes(metrics)

    @app.get("/healthz", response_model=Probe, responses={503: {"model": Probe}})
    async def healthz(response: Response) -> Probe:
        """The process answers and its scheduler ticked recently."""
        stalled = time.monotonic() - runner.alive_at  # both monotonic: immune to clock steps
        if stalled > STALLED_TICKS * TICK_INTERVAL:
            response.status_code = 503
            return Probe(status="stalled", reasons=[f"scheduler: no tick for {stalled:.0f}s"])
        return Probe(status="ok")

    @app.get("/readyz", response_model=Probe, responses={503: {"model": Probe}})
    async def readyz(response: Response, request: Request) -> Probe:
        """The state store answers and every provider answered its last reconcile. With
        ``api.read_auth`` the reasons (names, addresses, provider errors) need a read token;
        the status code never does, so an orchestrator's probe needs none."""
        reasons = not_ready(engine)
        if not reasons:
            return Probe(status="ready")
        response.status_code = 503
        if request.app.state.read_auth and not request.app.state.auth.allows(request, READ):
            return Probe(status="not ready")
        return Probe(status="not ready", reasons=reasons)

    @app.get(
        "/api/v1/services",
        response_model=list[ServiceView],
        dependencies=readers(app),
        responses={200: {"model": list[ServiceView]}},
    )
    async def services(journal: Journal = JOURNAL_DEFAULT) -> Response:
        """Every service in config order, from the current snapshot."""
        # Serialized in a thread (once per snapshot and page size): the loop stays free.
        body = await asyncio.to_thread(snapshots.current.services_json, journal)
        return Response(body, media_type="application/json")

    @app.get("/api/v1/summary", response_model=SummaryView, dependencies=readers(app))
    async def summary() -> SummaryView:
        """Services by phase, checks down, the last failover."""
        return SummaryView.model_validate(snapshots.current.summary_json())

    @app.get(
        "/api/v1/services/{name}",
        response_model=ServiceView,
        responses={404: ERRORS[404]},
        dependencies=readers(app),
    )
    async def service(name: ServiceName, journal: Journal = JOURNAL_DEFAULT) -> ServiceView:
        found = snapshots.current.view(name, journal)
        if found is None:
            raise HTTPException(404, f"unknown service {name!r}")
        return found

    @app.get(
        "/metrics",
        response_class=Response,
        dependencies=scrapers(app),
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics_text() -> Response:
        body, content_type = await scrapes.get()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, dependencies=readers(app))
    async def page(refresh: Annotated[float, Query(ge=0.2, le=3600)] = 2.0) -> HTMLResponse:
        """The status page: no external assets, refreshes itself."""
        html, nonce = render_page(snapshots.current, refresh)
        return HTMLResponse(html, headers=page_headers(nonce))


def _command_routes(app: FastAPI, engine: Engine, snapshots: SnapshotKeeper) -> None:
    """One POST route per entry of the command table."""
    for spec in COMMANDS.values():
        app.post(
            f"/api/v1/services/{{name}}/{spec.name}",
            response_model=CommandResponse,
            responses=ERRORS,
            summary=spec.summary,
        )(_command_endpoint(engine, snapshots, spec))


def _command_endpoint(
    engine: Engine, snapshots: SnapshotKeeper, spec: CommandSpec
) -> Callable[..., Awaitable[CommandResponse]]:
    async def take(name: str, who: str, body: CommandBody | None) -> CommandResponse:
        if name not in engine.services:
            raise HTTPException(404, f"unknown service {name!r}{known_services(engine.services)}")
        args = (body or CommandBody.model_validate({})).model_dump(by_alias=True, exclude_none=True)
        # Taken at once, in the loop: no synchronous store write (a locked or full disk must
        # not hold an operator's failover); the journal line goes through the writer.
        try:
            result = engine.execute(name, spec.name, args, source=f"api:{who}")
        except TrafficflipError as exc:
            # A follower could not queue it in etcd (away, or too slow to answer): say so,
            # never a 500. A timeout may still have queued it: the journal will tell.
            log.warning("api_command_unavailable service=%s command=%s: %s", name, spec.name, exc)
            raise HTTPException(
                503, f"{spec.name} not confirmed: {exc}; check the journal before retrying"
            ) from exc
        if not result.ok:
            raise HTTPException(409, result.detail)
        log.info("api_command service=%s command=%s by=%s", name, spec.name, who)
        view = snapshots.refresh(name)
        note = waits_for(spec.name, engine.services[name].config)
        return CommandResponse(command=spec.name, result=str(result), note=note, service=view)

    async def with_site(name: ServiceName, who: Operator, body: Any) -> CommandResponse:
        return await take(name, who, body)

    async def without_site(name: ServiceName, who: Operator, body: Any = None) -> CommandResponse:
        return await take(name, who, body)

    body_type = BODIES[spec.site_arg]
    # A command naming a site needs a body; the others accept an empty request too.
    endpoint = with_site if spec.site_arg else without_site
    endpoint.__annotations__["body"] = body_type if spec.site_arg else body_type | None
    endpoint.__name__ = spec.name
    return endpoint


def not_ready(engine: Engine) -> list[str]:
    """Why the service is not ready: a store that does not take writes (the writer does a
    small write when idle), an unreachable one, a provider that failed or has not yet
    answered a reconcile. Empty when ready."""
    reasons = []
    health = engine.writer.health if engine.writer is not None else None
    if health is not None and not health.ok:
        reasons.append(f"state store: {health.error} ({health.queued} writes kept in memory)")
    else:
        try:
            engine.store.journal(limit=1)
        except Exception as exc:  # whatever the backend raises, the store is not usable
            reasons.append(f"state store: {type(exc).__name__}: {exc}")
    for extra in engine.readiness:
        reasons += extra()
    used = {s.config.provider for s in engine.services.values()}
    for name, status in engine.provider_status.items():
        if name not in used:
            continue
        if not status.ok:
            reasons.append(f"provider {name}: {status.error_kind}: {status.error}")
        elif status.last_success is None:
            reasons.append(f"provider {name}: no reconcile yet")
    return reasons


def page_headers(nonce: str) -> dict[str, str]:
    # The page loads nothing from elsewhere: the policy makes a stray external asset fail.
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    )
    return {"Content-Security-Policy": policy, "Cache-Control": "no-store"}


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the service's SIGTERM handler stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """Serves ``app`` on ``listen`` in the running loop. The socket is bound at once, so a
    busy address is a configuration error at start, not a failure later."""

    def __init__(self, app: FastAPI, listen: str) -> None:
        self.app = app
        self.listen = listen
        self.socket = bind(listen)
        self.port = int(self.socket.getsockname()[1])
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        snapshots: SnapshotKeeper = self.app.state.snapshots
        await snapshots.start()
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            **server_limits(),
        )
        self._server = server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[self.socket]))
        while not server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
            raise RuntimeError("the API server stopped while starting")
        log.info("api_listening address=%s connections=%d", self.listen, connection_cap())

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self.socket.close()
        snapshots: SnapshotKeeper = self.app.state.snapshots
        await snapshots.stop()


def bind(listen: str) -> socket.socket:
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError([f"api.listen: cannot listen on {listen}: {exc.strerror}"]) from None
