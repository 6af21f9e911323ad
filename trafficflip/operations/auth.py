"""Who may do what through the API: bearer tokens, their scopes, and the FastAPI
dependencies that ask for them.

A token's scopes (``api.scopes``, by token name) are ``read`` (the API's reads, the status
page, ``/openapi.json``, the reasons of ``/readyz``, and ``/metrics``), ``metrics``
(``/metrics`` only: a scrape token), ``operate`` (the commands) and ``admin`` (reload). A
token without an entry has ``DEFAULT_SCOPES``. Reads and scrapes need a token only with
``api.read_auth``; commands and reload always do.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trafficflip.config.schema import TOKEN_NAME_PATTERN, ApiConfig
from trafficflip.errors import ConfigError

READ, METRICS, OPERATE, ADMIN = "read", "metrics", "operate", "admin"
# Tokens configured before scopes existed keep every right they had.
DEFAULT_SCOPES = frozenset({READ, METRICS, OPERATE, ADMIN})
# What a scope also allows: a reader may scrape (the metrics show what the reads show).
IMPLIED = {READ: {METRICS}}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
Credentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, description="a token from api.tokens")),
]


def load_tokens(config: ApiConfig) -> dict[str, str]:
    """Tokens from ``api.tokens`` and ``api.tokens_file`` (``name:token`` a line)."""
    tokens = {name: secret.get_secret_value() for name, secret in config.tokens.items()}
    if config.tokens_file is not None:
        tokens.update(_read_tokens_file(config.tokens_file))
    if config.read_auth and not tokens:
        raise ConfigError(["api.read_auth: needs a token in api.tokens or api.tokens_file"])
    unknown = sorted(set(config.scopes) - set(tokens))
    if unknown:
        raise ConfigError([f"api.scopes: no token named {', '.join(unknown)}"])
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
        name = name.strip()
        where = f"api.tokens_file: {path} line {number}"
        if not sep or not name or not token.strip():
            # The line itself is not echoed: it may be a token without its name.
            raise ConfigError([f"{where}: expected name:token"])
        if not re.fullmatch(TOKEN_NAME_PATTERN, name):
            # A name is journaled as the source of every command: one plain word.
            raise ConfigError([f"{where}: the name must match {TOKEN_NAME_PATTERN}"])
        tokens[name] = token.strip()
    return tokens


def granted(scopes: Sequence[str]) -> frozenset[str]:
    """The scopes a token holds, the implied ones included."""
    held = set(scopes)
    for scope in scopes:
        held |= IMPLIED.get(scope, set())
    return frozenset(held)


class TokenAuth:
    """Bearer-token check: the token's name, when it holds the scope asked for."""

    def __init__(
        self, tokens: Mapping[str, str], scopes: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        scopes = scopes or {}
        self._tokens = [
            (name, token.encode(), granted(scopes[name]) if name in scopes else DEFAULT_SCOPES)
            for name, token in tokens.items()
        ]

    def check(self, credentials: HTTPAuthorizationCredentials | None, scope: str) -> str:
        """The token's name; 401 without a valid token, 403 when it lacks ``scope``."""
        if not self._tokens:
            raise HTTPException(403, "mutating endpoints are off: no API token is configured")
        if credentials is None:
            raise HTTPException(401, "needs Authorization: Bearer <token>", _CHALLENGE)
        offered = credentials.credentials.encode()
        found = None
        for name, token, held in self._tokens:  # every token compared: constant time overall
            if hmac.compare_digest(offered, token):
                found = (name, held)
        if found is None:
            raise HTTPException(401, "invalid token", _CHALLENGE)
        if scope not in found[1]:
            raise HTTPException(403, f"token {found[0]} lacks the {scope} scope")
        return found[0]

    def allows(self, request: Request, scope: str) -> bool:
        """Whether ``request`` carries a token holding ``scope``; read from the header, not
        as a dependency, so a route that only shows more with a token declares none."""
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer" or not token:
            return False
        try:
            self.check(HTTPAuthorizationCredentials(scheme=kind, credentials=token), scope)
        except HTTPException:
            return False
        return True


def scoped(scope: str) -> Callable[..., Coroutine[Any, Any, str]]:
    """A dependency: the name of a token holding ``scope``, always required."""

    async def dependency(request: Request, credentials: Credentials) -> str:
        auth: TokenAuth = request.app.state.auth
        return auth.check(credentials, scope)

    return dependency


def scoped_with_read_auth(scope: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A dependency: a token holding ``scope``, required only with ``api.read_auth``."""

    async def dependency(request: Request, credentials: Credentials) -> None:
        if request.app.state.read_auth:
            request.app.state.auth.check(credentials, scope)

    return dependency


Operator = Annotated[str, Depends(scoped(OPERATE))]
Admin = Annotated[str, Depends(scoped(ADMIN))]
Reader = [Depends(scoped_with_read_auth(READ))]
Scraper = [Depends(scoped_with_read_auth(METRICS))]


def readers(app: FastAPI) -> list[Any]:
    """The read routes' dependencies: the token check only with ``api.read_auth``, so the
    OpenAPI document declares a security requirement only where one is enforced."""
    return Reader if app.state.read_auth else []


def scrapers(app: FastAPI) -> list[Any]:
    """``/metrics``'s dependencies, likewise."""
    return Scraper if app.state.read_auth else []
