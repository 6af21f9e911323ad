"""Provider writes only while leading: a wrapper like ``ReadOnlyProvider``, for cluster mode.

etcd fences state writes by itself (a txn on the leader key's revision); a provider call
cannot be fenced that way, so ``apply`` first checks that the lease still has ``margin``
seconds left on the local monotonic clock. The residual window: a call already in flight
when the lease runs out cannot be recalled; ``margin`` bounds it for calls shorter than it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from trafficflip.backend.provider import Provider, Receipt, wrapper_class
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Plan
from trafficflip.errors import NotLeaderError

log = logging.getLogger("trafficflip.cluster")


class FencedProvider(Provider):
    """Reads go through; ``apply`` goes through only while ``leading()`` holds."""

    def __init__(
        self, inner: Provider, leading: Callable[[], bool], refused: Callable[[], None]
    ) -> None:
        super().__init__(inner.name, inner.config)
        self.inner = inner
        self._leading = leading
        self._refused = refused

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
        """The wrapped provider's apply, refused unless this instance leads with margin."""
        if not plan:
            return None
        if not self._leading():
            self._refused()
            log.error("fencing_refused provider=%s %s: not the leader", self.name, plan.summary)
            raise NotLeaderError(f"{self.name}: not the cluster leader, refusing {plan.summary}")
        return await self.inner.apply(plan)

    async def _apply(self, plan: Plan) -> Receipt:
        raise NotLeaderError(f"{self.name}: apply goes through the wrapped provider")

    async def confirm(self, receipt: Receipt) -> bool:
        return await self.inner.confirm(receipt)

    async def close(self) -> None:
        await self.inner.close()


def fenced(
    provider: Provider, leading: Callable[[], bool], refused: Callable[[], None]
) -> Provider:
    """``provider`` with the same capabilities, writing only while ``leading()``."""
    return wrapper_class(provider, FencedProvider, "Fenced")(provider, leading, refused)
