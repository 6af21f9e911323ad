"""Find provider classes through the ``trafficflip.providers`` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from trafficflip.backend.provider import Provider
from trafficflip.errors import ConfigError

GROUP = "trafficflip.providers"


@cache
def available() -> dict[str, str]:
    """Provider type -> ``module:Class``, for error messages and docs."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def provider_class(type_name: str) -> type[Provider]:
    """Load the class registered for ``type_name``; ``ConfigError`` when there is none."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == type_name]
    if not matches:
        known = ", ".join(sorted(available())) or "none installed"
        raise ConfigError([f"unknown provider type {type_name!r} (known: {known})"])
    cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError([f"provider type {type_name!r} does not name a Provider class"])
    return cls
