"""The engine's cluster seams, as a subclass so ``runtime/engine.py`` knows nothing of etcd.

Every seam is small and listed here:

- ``observe``: a probe result is this vantage point's verdict only; it goes to the node,
  which publishes it. The engine's check health comes from the vote (``set_check_health``).
- ``request``/``tick``/``reconcile``/``take_commands``/``execute``: only the leader decides
  and writes; followers probe, publish, and leave operator commands in etcd for the leader.
- ``_set_providers``: every provider, whatever built it (start, reload, a later rebuild),
  is wrapped in ``FencedProvider``, so each backend write asks the lease first.
- ``demote``: a deposed leader forgets every sync's pending services and retry waits.
- the writer binds each state write to the term it was made in (``StateWriter.bind_term``).
- ``take_over``: a new leader reads every service's state from etcd before acting, so it
  continues each ramp from its stored step (the step's hold starts over: never early).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from trafficflip.backend.provider import Authority, Provider
from trafficflip.cluster.fencing import fenced
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.commands import CommandResult, apply_command
from trafficflip.decision.health import CheckHealth
from trafficflip.decision.model import ProbeResult, ServiceState
from trafficflip.errors import CommandError, ProviderError
from trafficflip.runtime.clock import Clock
from trafficflip.runtime.engine import Engine
from trafficflip.runtime.journal import resumed_state
from trafficflip.runtime.state import StateStore
from trafficflip.runtime.writer import StateWriter


class ClusterEngine(Engine):
    """An ``Engine`` that acts only while ``leading()`` and decides on voted health."""

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        store: StateStore,
        providers: Mapping[str, Provider],
        *,
        leading: Callable[[], bool],
        authority: Authority,
        observed: Callable[[str, ProbeResult], None],
        refused: Callable[[], None],
        term: Callable[[], int] = lambda: 0,
        clock: Clock | None = None,
        writer: StateWriter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``writer`` and ``rng`` as for ``Engine`` (the fault simulation passes both)."""
        self.leading = leading
        self.authority = authority
        self._observed = observed
        self._refused = refused
        super().__init__(services, store, providers, clock, writer=writer, rng=rng)
        if self.writer is not None:
            self.writer.bind_term(term)

    def _set_providers(self, providers: Mapping[str, Provider]) -> None:
        """Every provider the engine is given goes through here (start and every reload):
        the one place they are fenced."""
        wrapped = {name: fenced(p, self.authority, self._refused) for name, p in providers.items()}
        super()._set_providers(wrapped)

    def demote(self) -> None:
        """This instance stopped leading: no sync may keep a retry of the old term."""
        for sync in self.syncs.values():
            sync.drop_pending()

    def observe(self, key: str, result: ProbeResult) -> None:
        """This vantage point's probe: to the node for publishing, not into decisions."""
        self.listeners.probed(key, result)
        self._observed(key, result)

    def set_check_health(self, key: str, health: CheckHealth) -> None:
        """Replace a check's health with the voted one; converge its services if it moved."""
        before = self.monitor.checks.get(key)
        if before is None:
            return
        self.monitor.put(key, health)
        rise = self.monitor.jobs[key].health.rise
        if health.status is not before.status or health.settled(rise) != before.settled(rise):
            for name in self.monitor.subscribers[key]:
                self.request(name)

    def take_over(self) -> None:
        """Take every service's state from the store (a new leader, before acting)."""
        for name in self.services:
            stored = self.store.load(name)
            self.states[name] = (
                resumed_state(stored, self.clock) if stored is not None else ServiceState()
            )

    def follow(self, stored: Mapping[str, ServiceState]) -> None:
        """A follower shows the states the leader stored (``ClusterNode`` reads them)."""
        if self.leading():
            return
        for name, state in stored.items():
            if name in self.services:
                self.states[name] = resumed_state(state, self.clock)

    def request(self, name: str) -> None:
        if self.leading():
            super().request(name)

    async def tick(self) -> None:
        if self.leading():
            await super().tick()

    async def reconcile(self) -> None:
        """The leader reconciles; a follower refreshes its view of the stored state and
        reads every provider, so its status and readiness say whether it could take over."""
        if self.leading():
            await super().reconcile()
            return
        self.take_over()
        await self._read_providers()

    async def _read_providers(self) -> None:
        for name, provider in self.providers.items():
            services = [r.config for r in self.services.values() if r.config.provider == name]
            status = self.provider_status[name]
            try:
                await provider.read(services)
            except ProviderError as exc:
                status.ok, status.error, status.error_kind = False, str(exc), exc.kind
                continue
            status.ok, status.error, status.failures_in_row = True, "", 0
            status.last_success = self.clock.wall()

    def take_commands(self) -> dict[int, CommandResult]:
        """The leader takes every pending command; a follower leaves them for it."""
        if self.leading():
            return super().take_commands()
        return {}

    def execute(
        self, service: str, name: str, args: Mapping[str, object], source: str
    ) -> CommandResult:
        """An API command: the leader takes it now; a follower checks it and leaves it in
        etcd for the leader's next tick."""
        if self.leading():
            return super().execute(service, name, args, source)
        runtime = self.services.get(service)
        if runtime is None:
            return CommandResult.rejected(f"unknown service {service!r}")
        try:
            apply_command(
                runtime.config, self.states[service], name, dict(args), wall=self.clock.wall()
            )
        except CommandError as exc:
            return CommandResult.rejected(str(exc))
        self.store.submit(service, name, dict(args), source)
        return CommandResult(True, "queued for the leader")
