"""Load the configuration and check every rule, reporting all problems as ``key.path: reason``."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError

from trafficflip.backend.provider import Provider
from trafficflip.backend.registry import provider_class
from trafficflip.config.keys import did_you_mean, known_keys, takes_json
from trafficflip.config.schema import ServiceConfig, Settings, redact_url
from trafficflip.errors import ConfigError

CONFIG_ENV = "TRAFFICFLIP_CONFIG"
DNS_FIELDS = ("zone", "record", "type", "ttl")


@dataclass(frozen=True)
class ProviderSpec:
    """A configured provider: its class and its validated config."""

    name: str
    cls: type[Provider]
    config: BaseModel


@dataclass(frozen=True)
class Config:
    """A configuration that passed every check."""

    settings: Settings
    providers: Mapping[str, ProviderSpec]

    @property
    def services(self) -> list[ServiceConfig]:
        return self.settings.services

    def provider_of(self, service: ServiceConfig) -> ProviderSpec:
        return self.providers[service.provider]


NO_CONFIG = (
    "config: no configuration found: give --config FILE or set TRAFFICFLIP_CONFIG "
    "(an environment-only configuration sets TRAFFICFLIP_SERVICES)"
)


def load_config(
    path: str | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    providers: bool = True,
) -> Config:
    """Read YAML from ``path`` (or ``TRAFFICFLIP_CONFIG``), apply the environment, validate.

    ``providers=False`` is for commands that only read the state (``status``): provider
    settings, and the secrets in them, are neither needed nor checked.
    """
    if data is None:
        path = path or os.environ.get(CONFIG_ENV)
        if not path and not any(k.upper().startswith("TRAFFICFLIP_SERVICES") for k in os.environ):
            raise ConfigError([NO_CONFIG])
        data = read_yaml(path) if path else {}
    # YAML's .nan and .inf are floats that pass every "at least" rule; reject them wherever
    # they are written, provider keys included.
    non_finite = dict(_non_finite(data, ""))
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        # Report every problem at once: the shape errors, and what can still be judged
        # without a valid whole (provider settings, keys only a provider knows).
        shape = format_validation_error(exc, model=Settings)
        if providers:
            shape.extend(_problems_beside(_with_environment(data), shape))
        raise ConfigError(_with_non_finite(non_finite, shape)) from None
    except SettingsError as exc:
        raise ConfigError(_environment_problems(exc)) from None
    problems: list[str] = []
    specs: dict[str, ProviderSpec] = {}
    if providers:
        specs = _load_providers(settings.providers, problems)
        problems.extend(_service_problems(settings, specs))
    if problems or non_finite:
        raise ConfigError(_with_non_finite(non_finite, problems))
    return Config(settings, specs)


def _non_finite(data: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, float) and not math.isfinite(data):
        where = path or "config"
        yield where, f"{where}: must be a finite number, not {data}"
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from _non_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _non_finite(value, f"{path}[{index}]")


def _with_non_finite(non_finite: Mapping[str, str], problems: Sequence[str]) -> list[str]:
    """The non-finite numbers, then every other problem not about the same key."""
    others = [p for p in problems if p.partition(": ")[0] not in non_finite]
    return [*non_finite.values(), *others]


def read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError([f"config: {path}{where}: invalid YAML"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config: {path}: the top level must be a mapping"])
    return data


def format_validation_error(
    exc: ValidationError,
    prefix: str = "",
    *,
    model: type[BaseModel] | None = None,
    also: Sequence[str] = (),
) -> list[str]:
    """pydantic errors as ``services[0].health.fall: must be at least 1``.

    With the ``model`` validated, an unknown key names the nearest known one at its place
    (``also`` adds keys known beside the model's own, at its top level).
    """
    problems = []
    for error in exc.errors(include_url=False):
        path = _format_loc(error["loc"], prefix)
        # Any validator may quote a URL: its credentials never reach a log or an API answer.
        message = redact_url(error["msg"].removeprefix("Value error, "))
        if error["type"] == "extra_forbidden":
            known = known_keys(model, error["loc"][:-1]) if model else []
            if len(error["loc"]) == 1:
                known = [*known, *also]
            message = "unknown key" + did_you_mean(str(error["loc"][-1]), known)
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{path}: {message}")
    return problems


def _format_loc(loc: Sequence[int | str], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("http", "tcp", "dns"):
            continue  # the discriminator's tag, not a key the operator wrote
        else:
            path += f".{part}" if path else str(part)
    return path or "config"


def _with_environment(data: Mapping[str, Any]) -> dict[str, Any]:
    """The file's data with the environment laid over it, as ``Settings`` merges them."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, Mapping) and isinstance(over, Mapping):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over

    try:
        environment = EnvSettingsSource(Settings)()
    except SettingsError:
        environment = {}
    merged: dict[str, Any] = merge(dict(data), environment)
    return merged


def _problems_beside(data: Mapping[str, Any], shape: Sequence[str]) -> list[str]:
    """What can still be judged when the whole is invalid (``shape`` holds why): provider
    settings, every service that is valid alone by the rules within it, and keys that neither
    the core nor a service's provider knows in the services that are not."""
    raw_providers = data.get("providers")
    raw_providers = raw_providers if isinstance(raw_providers, Mapping) else {}
    problems: list[str] = []
    specs = _load_providers(raw_providers, problems)
    services = data.get("services")
    valid, invalid = [], []
    for index, raw in enumerate(services if isinstance(services, list) else []):
        try:
            valid.append((index, ServiceConfig.model_validate(raw)))
        except ValidationError:
            invalid.append((index, raw))
    problems.extend(_each_service_problems(valid, list(raw_providers), specs))
    problems.extend(_unknown_service_keys(invalid, raw_providers))
    return [p for p in dict.fromkeys(problems) if p not in shape]


def _unknown_service_keys(
    services: Sequence[tuple[int, Any]], raw_providers: Mapping[str, Any]
) -> Iterator[str]:
    """Keys of raw services that neither the core nor the service's provider knows."""
    for index, service in services:
        if not isinstance(service, Mapping):
            continue
        provider = raw_providers.get(str(service.get("provider")))
        type_name = provider.get("type") if isinstance(provider, Mapping) else None
        try:
            cls = provider_class(str(type_name))
        except ConfigError:
            continue
        known = [*ServiceConfig.model_fields, *cls.Service.model_fields]
        for key in service:
            if key not in known:
                yield f"services[{index}].{key}: unknown key{did_you_mean(str(key), known)}"


def _environment_problems(exc: SettingsError) -> list[str]:
    """An environment variable pydantic-settings could not decode, named with its key."""
    match = re.search(r'field "(\w+)"', str(exc))
    field = match.group(1) if match else ""
    prefix = f"TRAFFICFLIP_{field}".upper()
    problems = []
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(prefix):
            continue
        path = [part.lower() for part in name[len("TRAFFICFLIP_") :].split("__")]
        if not takes_json(Settings, path):
            continue
        try:
            json.loads(value)
        except ValueError:
            problems.append(
                f"{'.'.join(path)}: {name} is not valid JSON (a mapping or a list is "
                'written as JSON: {"name": "value"})'
            )
    return problems or [f"{field or 'config'}: {exc} (check the TRAFFICFLIP_ variables)"]


def _load_providers(
    raw_providers: Mapping[str, Any], problems: list[str]
) -> dict[str, ProviderSpec]:
    specs = {}
    for name, raw in raw_providers.items():
        key = f"providers.{name}"
        if not isinstance(raw, Mapping):
            continue  # only from an invalid whole, whose own error already says so
        type_name = raw.get("type")
        if not type_name:
            problems.append(f"{key}.type: required key is missing")
            continue
        try:
            cls = provider_class(str(type_name))
        except ConfigError as exc:
            problems.extend(f"{key}.type: {p}" for p in exc.problems)
            continue
        taken = sorted(set(cls.Service.model_fields) & set(ServiceConfig.model_fields))
        if taken:
            problems.append(
                f"{key}.type: provider type {type_name!r} declares service keys the core owns: "
                f"{', '.join(taken)}"
            )
            continue
        try:
            specs[name] = ProviderSpec(name, cls, cls.Config(**raw))
        except ValidationError as exc:
            problems.extend(format_validation_error(exc, key, model=cls.Config))
    return specs


def _service_problems(settings: Settings, providers: Mapping[str, ProviderSpec]) -> Iterator[str]:
    yield from _duplicates("services", [s.name for s in settings.services])
    yield from _each_service_problems(
        list(enumerate(settings.services)), list(settings.providers), providers
    )


def _each_service_problems(
    services: Sequence[tuple[int, ServiceConfig]],
    provider_names: Sequence[str],
    providers: Mapping[str, ProviderSpec],
) -> Iterator[str]:
    """The rules within one service (and its provider's), for each ``(index, service)``."""
    for index, service in services:
        key = f"services[{index}]"
        yield from _duplicates(f"{key}.sites", [s.name for s in service.sites])
        for w_index, window in enumerate(service.maintenance):
            if window.site not in service.site_names:
                known = ", ".join(service.site_names)
                yield f"{key}.maintenance[{w_index}].site: no site {window.site!r} (sites: {known})"
        if service.provider not in provider_names:
            known = ", ".join(sorted(provider_names)) or "none configured"
            yield f"{key}.provider: unknown provider {service.provider!r} (known: {known})"
        spec = providers.get(service.provider)
        if spec is None:
            continue
        if spec.cls.KIND == "dns":
            yield from (f"{key}.{p}" for p in _dns_problems(service, spec.cls))
        else:
            yield from (f"{key}.{p}" for p in _pool_problems(service))
        try:
            service.adapter_keys(spec.cls.Service)
        except ValidationError as exc:
            # The provider's model judges the keys the core does not own, typos included.
            core = list(ServiceConfig.model_fields)
            yield from format_validation_error(exc, key, model=spec.cls.Service, also=core)
            continue
        for path, reason in spec.cls.validate_service(service, spec.config):
            yield f"{key}.{path}: {reason}"


def _duplicates(key: str, names: Sequence[str]) -> Iterator[str]:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            yield f"{key}[{index}].name: duplicate name {name!r}"
        seen.add(name)


def _dns_problems(service: ServiceConfig, cls: type[Provider]) -> Iterator[str]:
    for field in DNS_FIELDS:
        if getattr(service, field) is None:
            yield f"{field}: required for a DNS provider"
    if service.zone is None or service.record is None or service.type is None:
        return
    zone, record = service.zone, service.record
    if not zone.endswith(".") or not record.endswith("."):
        yield "record: record and zone must be fully qualified (end with '.')"
    elif not _in_zone(record, zone):
        yield f"record: {record} is not inside zone {zone}"
    for s_index, site in enumerate(service.sites):
        for t_index, target in enumerate(site.targets):
            problem = _target_problem(service.type, target)
            if problem:
                yield f"sites[{s_index}].targets[{t_index}]: {problem}"
    yield from _cname_problems(service, cls)
    failback = service.failback
    if service.ttl and failback.step_duration < service.ttl and not failback.allow_short_steps:
        yield (
            f"failback.step_duration: {failback.step_duration:g}s is shorter than the ttl "
            f"({service.ttl}s): resolvers would skip steps (set allow_short_steps: true to allow)"
        )
    if service.planned is not None and service.ttl and service.planned.ttl >= service.ttl:
        yield (
            f"planned.ttl: {service.planned.ttl}s must be lower than the ttl ({service.ttl}s): "
            "it is the short TTL a planned move lowers the record to"
        )


def _cname_problems(service: ServiceConfig, cls: type[Provider]) -> Iterator[str]:
    if service.type != "CNAME":
        return
    # A name with a CNAME may hold nothing else, so only one site can serve at a time.
    if service.mode == "active-active":
        yield "mode: a CNAME cannot have more than one serving site at once (use active-passive)"
    if not cls.SUPPORTS_WEIGHTS and service.failback.steps != [100]:
        yield (
            "failback.steps: a CNAME on a provider without weights cannot mix two sites; "
            "use steps: [100]"
        )
    for s_index, site in enumerate(service.sites):
        if len(site.targets) != 1:
            yield f"sites[{s_index}].targets: a CNAME site has exactly one target"


def _pool_problems(service: ServiceConfig) -> Iterator[str]:
    for field in (*DNS_FIELDS, "planned"):
        if getattr(service, field) is not None:
            yield f"{field}: not used by a load-balancer provider"


def _in_zone(record: str, zone: str) -> bool:
    record, zone = record.lower(), zone.lower()
    return record == zone or record.endswith("." + zone) or zone == "."


def _target_problem(rtype: str, target: str) -> str | None:
    if rtype in ("A", "AAAA"):
        try:
            address = ipaddress.ip_address(target)
        except ValueError:
            return f"{target!r} is not an IP address"
        want = 4 if rtype == "A" else 6
        if address.version != want:
            return f"{target} is not an IPv{want} address (type {rtype})"
        return None
    if not target.endswith(".") or not all(_label_ok(p) for p in target[:-1].split(".")):
        return f"{target!r} is not a fully qualified host name (end it with '.')"
    return None


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
