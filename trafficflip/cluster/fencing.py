"""Provider writes only while leading: a wrapper like ``ReadOnlyProvider``, for cluster mode.

etcd fences state writes by itself (a txn on the leader key's revision); a provider call
cannot be fenced that way. So the wrapped provider is given the election as its
``Authority`` (``backend/provider.py``), which every backend write asks right before it is
sent, with that call's own timeout: a call that could outlive the lease is not started, and
the calls' timeouts are bounded so that one can be (``Election.call_limit``). ``apply``
also refuses at once when the lease is not held at all, before any read or quota wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from trafficflip.backend.provider import Authority, Provider, Receipt, wrapper_class
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Plan
from trafficflip.errors import NotLeaderError

log = logging.getLogger("trafficflip.cluster")


class FencedProvider(Provider):
    """Reads go through; every write of the wrapped provider asks ``authority`` first."""

    def __init__(self, inner: Provider, authority: Authority, refused: Callable[[], None]) -> None:
        super().__init__(inner.name, inner.config)
        self.inner = inner
        self.authority = authority
        inner.authorize(authority)
        self._refused = refused
        # Said once per provider built: an operator whose backend needs longer calls raises
        # cluster.lease_ttl (docs/cluster.md, Leader election and fencing).
        log.info("provider_fenced provider=%s call_limit=%.2fs", inner.name, authority.call_limit())

    @property
    def lagging_instances(self) -> tuple[str, ...]:
        return self.inner.lagging_instances

    @lagging_instances.setter
    def lagging_instances(self, value: tuple[str, ...]) -> None:
        pass  # the wrapped provider owns it

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """The wrapped provider's read (any instance may read)."""
        return await self.inner.read(services)

    async def apply(self, plan: Plan) -> Receipt | None:
        """The wrapped provider's apply, each of its writes asked of the authority."""
        if not plan:
            return None
        if not self.authority.may_act(0.0):
            self._refused()
            log.error("fencing_refused provider=%s %s: not the leader", self.name, plan.summary)
            raise NotLeaderError(f"{self.name}: not the cluster leader, refusing {plan.summary}")
        try:
            return await self.inner.apply(plan)
        except NotLeaderError:
            self._refused()  # a write in the middle of the apply was not sent
            raise

    async def _apply(self, plan: Plan) -> Receipt:
        raise NotLeaderError(f"{self.name}: apply goes through the wrapped provider")

    async def confirm(self, receipt: Receipt) -> bool:
        return await self.inner.confirm(receipt)

    async def close(self) -> None:
        await self.inner.close()


def fenced(provider: Provider, authority: Authority, refused: Callable[[], None]) -> Provider:
    """``provider`` with the same capabilities, writing only while ``authority`` allows."""
    if isinstance(provider, FencedProvider):
        return provider
    return wrapper_class(provider, FencedProvider, "Fenced")(provider, authority, refused)
