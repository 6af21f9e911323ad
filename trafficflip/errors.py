"""The error hierarchy: every failure trafficflip reports is one of these kinds.

- ``ConfigError``: the configuration is wrong; the process exits with status 2 at start.
- ``TransientProviderError``: the backend may succeed if asked again soon (throttling,
  a network error, a change still pending); retried with backoff.
- ``PermanentProviderError``: the backend refused for a reason that retrying will not fix
  (bad credentials, a missing zone); alerted, retried only at the reconcile interval.
- ``UnsafePlanError``: the plan would break a safety rule (an empty answer, a name outside
  the configuration); refused, never applied.
- ``CommandError``: an operator command that cannot apply; rejected, nothing changes.

Probes never raise: they return a result with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence


class TrafficflipError(Exception):
    """Base of every error trafficflip raises on purpose.

    ``kind`` is a short label for metrics and status. ``services`` names the services the
    failure is about when the rest of a batch went through (one bad record must not block
    every other flip); ``None`` means all of them. Callers read both directly.
    """

    kind = "error"

    def __init__(
        self, message: str, *, kind: str | None = None, services: frozenset[str] | None = None
    ) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.services = services


class ConfigError(TrafficflipError):
    """The configuration has one or more problems, each ``key.path: reason``."""

    kind = "config"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ProviderError(TrafficflipError):
    """A provider call failed (``kind`` and ``services`` as on ``TrafficflipError``)."""

    kind = "provider"


class TransientProviderError(ProviderError):
    """Worth retrying soon; ``retry_after`` is a hint in seconds when the backend gave one."""

    kind = "transient"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        services: frozenset[str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, kind=kind, services=services)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Retrying soon will not help; an operator has to act."""

    kind = "permanent"


class UnsafePlanError(TrafficflipError):
    """The plan breaks a safety rule and is refused (for the ``services`` it names)."""

    kind = "unsafe"


class CommandError(TrafficflipError):
    """An operator command cannot apply (an unknown command or site, a malformed reason);
    it is rejected and nothing changes."""
