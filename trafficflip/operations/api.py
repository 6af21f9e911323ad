"""The HTTP API, status page and metrics, served by uvicorn in the service's own event loop.

Reads are open (bind to loopback or put a proxy in front); every mutating call needs
``Authorization: Bearer <token>`` and goes through the operator command path, so it is
journaled with its reason and the token's name. With no token configured the mutating
endpoints answer 403: they are off, never open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from trafficflip.config.schema import NAME_PATTERN, ApiConfig, split_host_port
from trafficflip.errors import ConfigError
from trafficflip.operations.metrics import Metrics
from trafficflip.operations.page import render_page
from trafficflip.operations.views import ServiceView, service_view
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.scheduler import TICK_INTERVAL, Runner

log = logging.getLogger("trafficflip.operations.api")
# The scheduler ticks every TICK_INTERVAL; this many missed ticks means it is stuck.
STALLED_TICKS = 10
JOURNAL_DEFAULT, JOURNAL_MAX = 10, 200
# Seconds uvicorn waits for open requests when the service stops.
SHUTDOWN_GRACE = 2
# Reasons are journaled and logged on one line: no control characters.
REASON = Field("", max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")


class Error(BaseModel):
    detail: str


class Probe(BaseModel):
    status: str
    reasons: list[str] = []


class CommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = REASON


class FailoverBody(CommandBody):
    to: str = Field(description="the site to serve from", pattern=NAME_PATTERN, max_length=64)


class SiteBody(CommandBody):
    site: str = Field(pattern=NAME_PATTERN, max_length=64)


class CommandResult(BaseModel):
    command: str
    result: str
    service: ServiceView


def load_tokens(config: ApiConfig) -> dict[str, str]:
    """Tokens from ``api.tokens`` and ``api.tokens_file`` (``name:token`` a line)."""
    tokens = {name: secret.get_secret_value() for name, secret in config.tokens.items()}
    if config.tokens_file is not None:
        tokens.update(_read_tokens_file(config.tokens_file))
    return tokens


def _read_tokens_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError([f"api.tokens_file: cannot read {path}: {exc.strerror}"]) from None
    tokens = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not name.strip() or not token.strip():
            # The line itself is not echoed: it may be a token without its name.
            raise ConfigError([f"api.tokens_file: {path} line {number}: expected name:token"])
        tokens[name.strip()] = token.strip()
    return tokens


class TokenAuth:
    """Bearer-token check for mutating endpoints; returns the token's name."""

    scheme = HTTPBearer(auto_error=False, description="a token from api.tokens")

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = [(name, token.encode()) for name, token in tokens.items()]

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        if not self._tokens:
            raise HTTPException(403, "mutating endpoints are off: no API token is configured")
        if credentials is None:
            raise HTTPException(401, "needs Authorization: Bearer <token>", _CHALLENGE)
        offered = credentials.credentials.encode()
        found = None
        for name, token in self._tokens:  # every token is compared: constant time overall
            if hmac.compare_digest(offered, token):
                found = name
        if found is None:
            raise HTTPException(401, "invalid token", _CHALLENGE)
        return found


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(TokenAuth.scheme)],
) -> str:
    """The name of the token that authorized this request (a FastAPI dependency)."""
    auth: TokenAuth = request.app.state.auth
    return auth.check(credentials)


Operator = Annotated[str, Depends(operator)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text}
    for code, text in (
        (400, "the body is not JSON"),
        (409, "the command does not apply to this service (it has no such site)"),
        (401, "no token or a wrong one"),
        (403, "mutating endpoints are off"),
        (404, "unknown service"),
    )
}
ServiceName = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=64)]
Journal = Annotated[int, Query(ge=0, le=JOURNAL_MAX)]


def create_app(
    engine: Engine, runner: Runner, metrics: Metrics, tokens: Mapping[str, str]
) -> FastAPI:
    """The application over a running engine (the routes are in ``_routes``)."""
    app = FastAPI(title="trafficflip", version="1", docs_url=None, redoc_url=None)
    app.state.auth = TokenAuth(tokens)
    _routes(app, engine, runner, metrics)
    return app


def _routes(app: FastAPI, engine: Engine, runner: Runner, metrics: Metrics) -> None:
    def view(name: str, journal: int) -> ServiceView:
        if name not in engine.services:
            raise HTTPException(404, f"unknown service {name!r}")
        return service_view(engine, name, engine.clock.now(), journal)

    @app.get("/healthz", response_model=Probe, responses={503: {"model": Probe}})
    async def healthz(response: Response) -> Probe:
        """The process answers and its scheduler ticked recently."""
        stalled = time.monotonic() - runner.alive_at  # both monotonic: immune to clock steps
        if stalled > STALLED_TICKS * TICK_INTERVAL:
            response.status_code = 503
            return Probe(status="stalled", reasons=[f"scheduler: no tick for {stalled:.0f}s"])
        return Probe(status="ok")

    @app.get("/readyz", response_model=Probe, responses={503: {"model": Probe}})
    async def readyz(response: Response) -> Probe:
        """The state store answers and every provider answered its last reconcile."""
        reasons = not_ready(engine)
        if reasons:
            response.status_code = 503
            return Probe(status="not ready", reasons=reasons)
        return Probe(status="ready")

    @app.get("/api/v1/services", response_model=list[ServiceView])
    async def services(journal: Journal = JOURNAL_DEFAULT) -> list[ServiceView]:
        return [view(name, journal) for name in engine.services]

    @app.get("/api/v1/services/{name}", response_model=ServiceView, responses={404: ERRORS[404]})
    async def service(name: ServiceName, journal: Journal = JOURNAL_DEFAULT) -> ServiceView:
        return view(name, journal)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics_text() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page(refresh: Annotated[float, Query(ge=0.2, le=3600)] = 2.0) -> HTMLResponse:
        """The status page: one screen, no external assets, refreshes itself."""
        views = [view(name, 5) for name in engine.services]
        html, nonce = render_page(views, refresh)
        return HTMLResponse(html, headers=page_headers(nonce))

    _command_routes(app, engine, view)


def _command_routes(app: FastAPI, engine: Engine, view: Callable[[str, int], ServiceView]) -> None:
    def run(name: str, command: str, args: dict[str, Any], source: str) -> CommandResult:
        view(name, 0)  # 404 first
        command_id = engine.store.submit(name, command, args, source=f"api:{source}")
        result = engine.take_commands().get(command_id, "error: not taken")
        if not result.startswith("ok"):
            raise HTTPException(409, result.removeprefix("error: "))
        log.info("api_command service=%s command=%s by=%s", name, command, source)
        engine.request(name)  # move the traffic now, not at the next tick
        return CommandResult(command=command, result=result, service=view(name, JOURNAL_DEFAULT))

    def post(command: str, summary: str) -> Callable[[Callable[..., Any]], Any]:
        return app.post(
            f"/api/v1/services/{{name}}/{command}",
            response_model=CommandResult,
            responses=ERRORS,
            summary=summary,
        )

    @post("failover", "pin traffic to a site")
    async def failover(name: ServiceName, body: FailoverBody, who: Operator) -> CommandResult:
        return run(name, "failover", body.model_dump(), who)

    @post("failback", "release a pin or drain and approve failback")
    async def failback(
        name: ServiceName, who: Operator, body: CommandBody | None = None
    ) -> CommandResult:
        return run(name, "failback", (body or CommandBody()).model_dump(), who)

    @post("hold", "freeze automatic changes")
    async def hold(
        name: ServiceName, who: Operator, body: CommandBody | None = None
    ) -> CommandResult:
        return run(name, "hold", (body or CommandBody()).model_dump(), who)

    @post("release", "resume automatic changes")
    async def release(
        name: ServiceName, who: Operator, body: CommandBody | None = None
    ) -> CommandResult:
        return run(name, "release", (body or CommandBody()).model_dump(), who)

    @post("promote", "make a site the new primary")
    async def promote(name: ServiceName, body: SiteBody, who: Operator) -> CommandResult:
        return run(name, "promote", body.model_dump(), who)

    @post("drain", "move traffic away from a site along the steps")
    async def drain(name: ServiceName, body: SiteBody, who: Operator) -> CommandResult:
        return run(name, "drain", body.model_dump(), who)


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
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
        self._server = server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[self.socket]))
        while not server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
            raise RuntimeError("the API server stopped while starting")
        log.info("api_listening address=%s", self.listen)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self.socket.close()


def bind(listen: str) -> socket.socket:
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError([f"api.listen: cannot listen on {listen}: {exc.strerror}"]) from None
