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
RELOADED = frozenset({"services", "providers", "config", "reload_removal_share"})
# Removed services named in a rejection; the count says how many more.
REMOVED_LISTED = 20


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

    def reload(self, allow_removal: bool = False) -> list[str]:
        """Take the configuration as it is now; the problems, empty when it was taken.

        A configuration that removes services is taken only with ``allow_removal`` (or
        within the running configuration's ``reload_removal_share``): a file read while
        being written in place looks valid and lists only the services before the cut.
        """
        try:
            config = load_config(self.path)
            self._check_removal(config, allow_removal)
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

    def _check_removal(self, config: Config, allow_removal: bool) -> None:
        running = [s.name for s in self.config.services]
        kept = {s.name for s in config.services}
        removed = [name for name in running if name not in kept]
        share = self.config.settings.reload_removal_share
        if not removed or allow_removal or len(removed) <= share * len(running):
            return
        listed = ", ".join(removed[:REMOVED_LISTED])
        if len(removed) > REMOVED_LISTED:
            listed += f" and {len(removed) - REMOVED_LISTED} more"
        raise ConfigError(
            [
                f"services: the reload would remove {len(removed)} of {len(running)} "
                f"services ({listed}); if that is meant, reload with --allow-removal "
                '(POST /api/v1/reload {"allow_removal": true}); a file written in place may '
                "have been read half-written"
            ]
        )
