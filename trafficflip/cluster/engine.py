"""The engine's cluster seams, as a subclass so ``runtime/engine.py`` stays untouched.

Every seam is small and listed here so it can move into the engine itself:

- ``observe``: a probe result is this vantage point's verdict only; it goes to the node,
  which publishes it. The engine's check health comes from the vote (``set_check_health``).
- ``request``/``tick``/``reconcile``/``take_commands``: only the leader decides and writes;
  followers probe and publish.
- providers are wrapped in ``FencedProvider`` (no provider call without lease margin).
- ``reload``: a new leader reads every service's state from etcd before acting, so it
  continues each ramp from its stored step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from trafficflip.backend.provider import Provider
from trafficflip.cluster.fencing import fenced
from trafficflip.config.loader import Config
from trafficflip.decision.commands import CommandError, apply_command
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.model import ProbeResult, ServiceState
from trafficflip.decision.plan import Plan
from trafficflip.errors import ProviderError
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.state import Command, StateStore


class ClusterEngine(Engine):
    """An ``Engine`` that acts only while ``leading()`` and decides on voted health."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        providers: Mapping[str, Provider],
        *,
        leading: Callable[[], bool],
        may_write: Callable[[], bool],
        observed: Callable[[str, ProbeResult], None],
        refused: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leading = leading
        self._observed = observed
        wrapped = {name: fenced(p, may_write, refused) for name, p in providers.items()}
        super().__init__(config, store, wrapped, clock)

    def observe(self, key: str, result: ProbeResult) -> None:
        """This vantage point's probe: to the node for publishing, not into decisions."""
        self._emit("probed", key, result)
        self._observed(key, result)

    def set_check_health(self, key: str, health: CheckHealth) -> None:
        """Replace a check's health with the voted one; converge its services if it moved."""
        before = self.monitor.checks[key]
        self.monitor.checks[key] = health
        rise = self.monitor.jobs[key].health.rise
        if health.status is not before.status or health.settled(rise) != before.settled(rise):
            for name in self.monitor.subscribers[key]:
                self.request(name)

    def reload(self) -> None:
        """Take every service's state from the store (a new leader, before acting)."""
        for name in self.services:
            self.states[name] = self.store.load(name) or ServiceState()

    def request(self, service: str) -> None:
        if self.leading():
            super().request(service)

    async def tick(self) -> None:
        if self.leading():
            await super().tick()

    async def reconcile(self, *, apply: bool = True) -> dict[str, Plan]:
        """The leader reconciles; a follower refreshes its view of the stored state and
        reads every provider, so its status and readiness say whether it could take over."""
        if self.leading():
            return await super().reconcile(apply=apply)
        self.reload()
        await self._read_providers()
        return {}

    async def _read_providers(self) -> None:
        for name, provider in self.providers.items():
            services = [r.config for r in self.services.values() if r.config.provider == name]
            status = self.provider_status[name]
            try:
                await provider.read(services)
            except ProviderError as exc:
                status.ok, status.error = False, str(exc)
                status.error_kind = exc.kind
                continue
            status.ok, status.error, status.failures_in_row = True, "", 0
            status.last_success = self.clock()

    def take_commands(self) -> dict[int, str]:
        """The leader takes every pending command. A follower takes none: it answers for each
        whether it is valid, and leaves it in the store for the leader's next tick."""
        if self.leading():
            return super().take_commands()
        return {command.id: self._queued(command) for command in self.store.pending()}

    def _queued(self, command: Command) -> str:
        runtime = self.services.get(command.service)
        if runtime is None:
            return f"error: unknown service {command.service!r}"
        try:
            apply_command(runtime.config, self.states[command.service], command.name, command.args)
        except CommandError as exc:
            return f"error: {exc}"
        return "ok: queued for the leader"
