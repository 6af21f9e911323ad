"""Reload: a new configuration taken without a restart (SIGHUP, ``POST /api/v1/reload``).

A valid configuration takes effect at once: checks start and stop, health and failback
settings apply, and every kept service's state, ramps included, carries on. An invalid one
changes nothing: each problem is logged as ``key.path: reason`` and returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from trafficflip.backend.provider import Provider
from trafficflip.config.loader import Config, load_config
from trafficflip.decision.model import Event, EventKind
from trafficflip.errors import ConfigError
from trafficflip.runtime.engine import Engine

log = logging.getLogger("trafficflip")
# Settings a running service takes on reload; the rest (state, api, notify...) at restart.
RELOADED = frozenset({"services", "providers", "config"})


class Reloader:
    """Re-reads the configuration file and the environment for a running engine."""

    def __init__(
        self,
        path: str | None,
        config: Config,
        engine: Engine,
        build: Callable[[Config], Mapping[str, Provider]],
        after: Callable[[], object] = lambda: None,
    ) -> None:
        self.path = path
        self.config = config
        self.engine = engine
        self._build = build
        self._after = after  # the scheduler picks up added and removed checks

    def reload(self) -> list[str]:
        """Take the configuration as it is now; the problems, empty when it was taken."""
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload_rejected %s", problem)
            log.error("reload_rejected: the running configuration stays")
            return exc.problems
        old_providers = list(self.engine.providers.values())
        changed = self.engine.reload(config.services, self._build(config))
        for provider in old_providers:
            asyncio.get_running_loop().create_task(provider.close())
        restart = sorted(
            key
            for key in type(config.settings).model_fields
            if key not in RELOADED
            and getattr(config.settings, key) != getattr(self.config.settings, key)
        )
        self.config = config
        self._after()
        message = str(changed)
        if restart:
            message += f"; takes effect at restart: {', '.join(restart)}"
        self.engine.journal.record("*", [Event(EventKind.CONFIG_RELOADED, message)])
        return []
