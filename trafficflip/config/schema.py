"""The configuration schema: a YAML file plus ``TRAFFICFLIP_`` environment variables.

Shape errors come from pydantic; rules that span keys (a record inside its zone, steps
long enough for the TTL) live in ``trafficflip.config.loader``. Both report ``key.path: reason``.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from trafficflip.config.durations import Duration

MIN_INTERVAL = 0.1
MAX_PROBE_WORKERS = 64
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with a default port) a bare host or address."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", value.strip())
    if not match:
        bare_v6 = _as_ip(value)
        if bare_v6 is not None and default_port is not None:
            return value, default_port
        raise ValueError(f"invalid address {value!r}: use host:port or [v6]:port")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"invalid address {value!r}: a port is required (host:port)")
        return host, default_port
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid address {value!r}: port {port} out of range 1-65535")
    return host, port


def _as_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _canonical(target: str) -> str:
    address = _as_ip(target)
    return str(address) if address is not None else target.lower()


class HttpCheck(Strict):
    type: Literal["http"]
    url: str
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = [200]
    body: str | None = None
    body_regex: str | None = None
    host: str | None = None
    headers: dict[str, str] = {}
    verify: bool = True
    sni: str | None = None
    max_latency: Duration | None = None

    def describe(self) -> str:
        """``http http://192.0.2.10/healthz``: never credentials, query string or headers,
        which may hold tokens."""
        url = httpx.URL(self.url)
        port = f":{url.port}" if url.port else ""
        return f"{self.type} {url.scheme}://{url.host}{port}{url.path}"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except Exception as exc:  # httpx raises several types for malformed URLs
            raise ValueError(f"invalid URL {value!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"invalid URL {value!r}: needs http:// or https:// and a host")
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class TcpCheck(Strict):
    type: Literal["tcp"]
    address: str

    def describe(self) -> str:
        return f"tcp {self.address}"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_host_port(value)
        return value


class DnsCheck(Strict):
    type: Literal["dns"]
    server: str
    name: str
    rdtype: Literal["A", "AAAA", "CNAME", "TXT", "MX", "NS", "SOA", "SRV", "PTR"] = "A"
    expect: list[str] = []
    tcp: bool = False

    def describe(self) -> str:
        return f"dns {self.name} {self.rdtype} @{self.server}"

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        split_host_port(value, default_port=53)
        return value


Check = Annotated[HttpCheck | TcpCheck | DnsCheck, Field(discriminator="type")]


class HealthConfig(Strict):
    interval: Duration = 5.0
    timeout: Duration = 2.0
    fall: int = 3
    rise: int = 2
    require: Literal["all", "any"] = "all"

    @field_validator("fall", "rise")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < MIN_INTERVAL:
            raise ValueError(f"must be at least {MIN_INTERVAL * 1000:.0f}ms")
        return value

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthConfig:
        if self.timeout >= self.interval:
            raise ValueError(f"timeout ({self.timeout}s) must be below interval ({self.interval}s)")
        return self


class FailbackConfig(Strict):
    mode: Literal["auto", "manual"] = "auto"
    stabilize: Duration = 120.0
    steps: list[int] = [10, 25, 50, 100]
    step_duration: Duration = 60.0
    allow_short_steps: bool = False
    gates: list[Check] = []

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100:
            raise ValueError("must end at 100")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("every step must be between 1 and 100")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"must be strictly ascending, got {steps}")
        return steps


class SiteConfig(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
    targets: Annotated[list[str], Field(min_length=1)]
    checks: Annotated[list[Check], Field(min_length=1)]
    weight: Annotated[int, Field(ge=1, le=100)] = 1


class NoServiceKeys(Strict):
    """The adapter keys of a provider that has none: every key it is given is unknown."""


K = TypeVar("K", bound=BaseModel)


class _KeysCache:
    """A service's adapter keys, validated once. Not part of the service's identity: two
    services with the same keys are equal whether or not either was asked for them."""

    __slots__ = ("extra", "keys")

    def __init__(self) -> None:
        self.extra: dict[str, Any] | None = None
        self.keys: BaseModel | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _KeysCache)

    __hash__ = None  # type: ignore[assignment]


class ServiceConfig(BaseModel):
    """One service. The YAML is flat: the keys below are the core's (the DNS keys ``zone``,
    ``record``, ``type`` and ``ttl`` among them, shared by every DNS provider and used by plan
    rendering); any other key belongs to the service's provider, whose ``Service`` model
    validates it (``adapter_keys``). Unknown keys are reported by the loader, with their path.
    """

    # extra="allow" keeps the adapter's keys for its own model; the loader rejects the rest.
    model_config = ConfigDict(extra="allow", frozen=True)
    _adapter_keys: _KeysCache = PrivateAttr(default_factory=_KeysCache)

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
    provider: str
    zone: str | None = None
    record: str | None = None
    type: Literal["A", "AAAA", "CNAME"] | None = None
    ttl: Annotated[int, Field(ge=1, le=86400)] | None = None
    mode: Literal["active-passive", "active-active"] = "active-passive"
    health: HealthConfig = HealthConfig()
    failback: FailbackConfig = FailbackConfig()
    all_down: Literal["keep", "all"] = "keep"
    sites: Annotated[list[SiteConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _canonical_targets(self) -> ServiceConfig:
        # Servers answer in canonical form (RFC 5952 IPv6, lower-case names): a target
        # written otherwise would never compare equal and be rewritten at every reconcile.
        if self.type is not None:
            sites = [
                s.model_copy(update={"targets": [_canonical(t) for t in s.targets]})
                for s in self.sites
            ]
            object.__setattr__(self, "sites", sites)
        return self

    def site(self, name: str) -> SiteConfig:
        return next(s for s in self.sites if s.name == name)

    @property
    def extra_keys(self) -> dict[str, Any]:
        """The keys the core does not own, as written: the provider's to validate."""
        return dict(self.model_extra or {})

    def adapter_keys(self, model: builtins.type[K]) -> K:
        """This service's provider keys validated by ``model`` (the provider's ``Service``).

        Validated on first use and kept; raises ``pydantic.ValidationError`` (the loader has
        already reported it for a loaded config).
        """
        cache, extra = self._adapter_keys, self.extra_keys
        if not isinstance(cache.keys, model) or cache.extra != extra:
            cache.keys, cache.extra = model.model_validate(extra), extra
        assert isinstance(cache.keys, model)
        return cache.keys

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)


TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"
# What a notification target is told about unless it lists its own ``events``.
NotifyEvent = Literal[
    "failover",
    "failback_started",
    "ramp_step",
    "failback_completed",
    "failback_aborted",
    "planned_move_started",
    "planned_move_completed",
    "drain_started",
    "drain_completed",
    "all_down",
    "recovered",
    "command",
    "provider_error",
    "provider_recovered",
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)


class ApiConfig(Strict):
    """The HTTP API, status page and metrics (``TRAFFICFLIP_API__*``)."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    # Name -> token; the name is journaled as the source of every command made with it.
    tokens: dict[Annotated[str, Field(pattern=TOKEN_NAME_PATTERN)], SecretStr] = {}
    tokens_file: Path | None = None
    # Reads need a token too (all but /healthz, /readyz and /metrics).
    read_auth: bool = False
    # Host header values accepted ("*.example.com" allowed); empty accepts any. A browser
    # on the same machine can be pointed at a loopback API through a rebinding DNS name.
    allowed_hosts: list[str] = []
    # Largest request body accepted, in bytes; a command body is a few hundred.
    max_body: Annotated[int, Field(ge=1024, le=1048576)] = 16384

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in tokens.items():
            if not token.get_secret_value().strip():
                raise ValueError(f"token {name!r} is empty")
        return tokens


class NotifyTarget(Strict):
    """One webhook. The URL is a secret: a Slack webhook URL is its own credential."""

    url: SecretStr
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)] = "webhook"
    format: Literal["json", "slack"] = "json"
    events: list[NotifyEvent] = list(NOTIFY_EVENTS)
    headers: dict[str, SecretStr] = {}
    timeout: Duration = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        try:
            url = httpx.URL(value.get_secret_value())
        except Exception:  # httpx raises several types; the message would echo the URL
            raise ValueError("invalid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("invalid URL: needs http:// or https:// and a host")
        return value


class Settings(BaseSettings):
    """The whole configuration. Environment variables override the YAML file."""

    model_config = SettingsConfigDict(
        env_prefix="TRAFFICFLIP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    config: str | None = None
    state: str = "sqlite:///trafficflip.db"
    reconcile_interval: Duration = 30.0
    # 1 probes in the service's process; N > 1 runs N probe processes (docs/performance.md).
    probe_workers: Annotated[int, Field(ge=1, le=MAX_PROBE_WORKERS)] = 1
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = (
        "INFO"
    )
    log_format: Literal["text", "json"] = "text"
    providers: dict[str, dict[str, Any]] = {}
    services: list[ServiceConfig] = []
    api: ApiConfig = ApiConfig()
    notify: list[NotifyTarget] = []

    @field_validator("notify")
    @classmethod
    def _unique_targets(cls, targets: list[NotifyTarget]) -> list[NotifyTarget]:
        names = [t.name for t in targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate target name {duplicates[0]!r}: give each a name")
        return targets

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init arguments; the environment wins over it.
        return (env_settings, init_settings)

    def service(self, name: str) -> ServiceConfig:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)
