"""The configuration schema: a YAML file plus ``TRAFFICFLIP_`` environment variables.

Shape errors come from pydantic; rules that span keys (a record inside its zone, steps
long enough for the TTL) live in ``trafficflip.config.loader``. Both report ``key.path: reason``.
"""

from __future__ import annotations

import builtins
import functools
import ipaddress
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from trafficflip.config.durations import Duration, parse_duration
from trafficflip.events import NOTIFIED, EventKind

MIN_INTERVAL = 0.1
MAX_PROBE_WORKERS = 64
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    # No NaN or infinity: a duration of .inf passes every "at least" rule, then breaks `run`.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


def redact_url(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced: ``http://user:pass@host``
    becomes ``http://***@host``. Errors quote URLs; credentials must not reach the log."""
    return re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@", r"\1***@", text)


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
            raise ValueError(redact_url(f"invalid URL {value!r}: {exc}")) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                redact_url(f"invalid URL {value!r}: needs http:// or https:// and a host")
            )
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


class PlannedConfig(Strict):
    """Planned moves on a DNS name: lower the TTL to ``ttl`` and wait out the old one first."""

    ttl: Annotated[int, Field(ge=1, le=86400)]


class MaintenanceWindow(Strict):
    """A site drained for ``duration`` from ``start``, again at every ``every``.

    ``every`` is a duration (``7d``, ``12h``) counted from ``start``, or a five-field crontab
    expression (``0 2 * * sun``) read in ``timezone``; without it the window happens once.
    With a crontab ``every``, ``start`` is optional and only says from when it applies.
    """

    site: str
    start: datetime | None = None
    duration: Duration
    every: str | None = None
    timezone: str = "UTC"

    @field_validator("start")
    @classmethod
    def _aware(cls, start: datetime | None) -> datetime | None:
        if start is not None and start.tzinfo is None:
            raise ValueError("needs an offset (2026-11-29T02:00:00+00:00 or ...Z)")
        return start

    @field_validator("duration")
    @classmethod
    def _positive(cls, duration: float) -> float:
        if duration <= 0:
            raise ValueError("must be longer than 0s")
        return duration

    @model_validator(mode="after")
    def _schedule(self) -> MaintenanceWindow:
        self.trigger()  # every, start and timezone make a schedule, or the error says why
        return self

    @property
    def cron(self) -> bool:
        return self.every is not None and len(self.every.split()) > 1

    def start_after(self, wall: float) -> float | None:
        """The first start after ``wall`` (epoch seconds), by the trigger; None if none."""
        fire = _trigger(self).get_next_fire_time(None, datetime.fromtimestamp(wall + _AFTER, UTC))
        if fire is None:
            return None
        start = float(fire.timestamp())
        # A one-off (date) trigger names its date whatever the time asked about.
        return start if start > wall else None

    def trigger(self) -> BaseTrigger:
        """The APScheduler trigger whose fire times are this window's starts."""
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None
        if self.cron:
            assert self.every is not None
            fields = self.every.split()
            if len(fields) != 5:
                raise ValueError(f"every: {self.every!r} is not a five-field crontab expression")
            if any(c.isdigit() for c in fields[4]):
                # APScheduler numbers weekdays from Monday (0), crontab from Sunday (0): a
                # number would silently shift the window by a day.
                raise ValueError(
                    f"every: name the days of the week (sun, mon-fri), not {fields[4]!r}"
                )
            minute, hour, day, month, day_of_week = fields
            try:
                return CronTrigger(
                    minute=minute,
                    hour=hour,
                    day=day,
                    month=month,
                    day_of_week=day_of_week,
                    start_date=self.start,
                    timezone=zone,
                )
            except ValueError as exc:
                raise ValueError(f"every: {self.every!r}: {exc}") from None
        if self.start is None:
            raise ValueError("start: required unless every is a crontab expression")
        if self.every is None:
            return DateTrigger(run_date=self.start, timezone=zone)
        try:
            period = parse_duration(self.every)
        except ValueError as exc:
            raise ValueError(f"every: {exc}; or a crontab expression (0 2 * * sun)") from None
        if period <= self.duration:
            raise ValueError(f"every: {self.every} must be longer than the duration")
        return IntervalTrigger(seconds=period, start_date=self.start, timezone=zone)


# A start exactly at the time asked about belongs to the occurrence that just ended.
_AFTER = 0.001


@functools.lru_cache(maxsize=4096)
def _trigger(window: MaintenanceWindow) -> BaseTrigger:
    return window.trigger()


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
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
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
    planned: PlannedConfig | None = None
    maintenance: list[MaintenanceWindow] = []
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

    @functools.cached_property
    def site_names(self) -> tuple[str, ...]:
        # Cached: every decision reads it several times (a frozen model: sites never change).
        return tuple(s.name for s in self.sites)


TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"


class ApiConfig(Strict):
    """The HTTP API, status page and metrics (``TRAFFICFLIP_API__*``)."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    # Name -> token; the name is journaled as the source of every command made with it.
    tokens: dict[Annotated[str, Field(pattern=TOKEN_NAME_PATTERN)], SecretStr] = {}
    tokens_file: Path | None = None
    # Token name -> its scopes (read, metrics, operate, admin; operations/auth.py); a token
    # not named here holds them all.
    scopes: dict[str, list[Literal["read", "metrics", "operate", "admin"]]] = {}
    # Reads need a token too: all but /healthz and /readyz's status code.
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
    events: list[EventKind] = list(NOTIFIED)
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

    @field_validator("headers")
    @classmethod
    def _header_values(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # A YAML block scalar or a secret read from a file ends in a newline, which HTTP
        # refuses (and the refusal would quote the secret): strip it; reject one inside.
        clean = {}
        for name, value in headers.items():
            text = value.get_secret_value().strip()
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text if c != "\t"):
                raise ValueError(f"header {name!r}: the value holds a control character")
            clean[name] = SecretStr(text)
        return clean


class JournalConfig(Strict):
    """Journal retention (``TRAFFICFLIP_JOURNAL__*``): entries older than ``max_age`` and
    beyond the newest ``max_entries`` are deleted once an hour. The defaults keep a year of
    ordinary operation under 100 MB (docs/operations.md has the arithmetic)."""

    max_age: Duration = 365 * 86400.0
    max_entries: Annotated[int, Field(ge=1000)] = 250_000


class EtcdTls(Strict):
    """TLS to etcd: a CA bundle, and a client certificate with its key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class ClusterConfig(Strict):
    """Cluster mode (``TRAFFICFLIP_CLUSTER__*``): instances on etcd, one leader, a vote."""

    # NoDecode: the environment gives a comma-separated list, not JSON.
    etcd: Annotated[list[str], NoDecode]
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "trafficflip"
    )
    prefix: str = "/trafficflip"
    lease_ttl: Duration = 10.0
    quorum: Literal["majority", "all", "any"] | Annotated[int, Field(ge=1)] = "majority"
    tls: EtcdTls | None = None
    username: str | None = None
    password: SecretStr | None = None

    @field_validator("etcd", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # TRAFFICFLIP_CLUSTER__ETCD=http://a:2379,http://b:2379
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("quorum", mode="before")
    @classmethod
    def _quorum(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value in ("majority", "all", "any") or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            return value
        raise ValueError(f"invalid quorum {value!r}: use majority, all, any or an integer k >= 1")

    @field_validator("etcd")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("at least one etcd member URL")
        for url in urls:
            if not re.fullmatch(r"https?://[^/\s]+/?", url):
                raise ValueError(redact_url(f"invalid etcd URL {url!r}: use http(s)://host:port"))
        return urls

    @field_validator("lease_ttl")
    @classmethod
    def _ttl(cls, ttl: float) -> float:
        if ttl < 2:
            raise ValueError("at least 2s")
        return ttl

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", prefix):
            raise ValueError(f"invalid prefix {prefix!r}: use /name or /name/sub")
        return prefix


class Settings(BaseSettings):
    """The whole configuration. Environment variables override the YAML file."""

    model_config = SettingsConfigDict(
        env_prefix="TRAFFICFLIP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
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
    journal: JournalConfig = JournalConfig()
    # The share of the running services a reload may remove without allow_removal: 0 (the
    # default) asks for it at any removal, 1 never does.
    reload_removal_share: Annotated[float, Field(ge=0, le=1)] = 0.0

    cluster: ClusterConfig | None = None

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
