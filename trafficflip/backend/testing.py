"""A first-class in-memory provider for tests and benchmarks (like httpx's MockTransport).

It holds answers in a dict and fails on demand, so the engine's retry and safety paths can be
driven without a backend. Real backends are tested against real servers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel

from trafficflip.backend.provider import Provider, Receipt
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Plan
from trafficflip.errors import PermanentProviderError


class MemoryConfig(BaseModel):
    type: str = "memory"


class MemoryProvider(Provider):
    """Holds answers per service and site; ``fail`` makes the next calls raise its result."""

    TYPE = "memory"
    Config = MemoryConfig

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name, MemoryConfig())
        self.answers: dict[str, dict[str | None, Answer]] = {}
        self.fail: Callable[[], Exception] | None = None
        # Services whose changes are refused while the rest of a plan is applied.
        self.refuse: frozenset[str] = frozenset()
        self.applies = 0

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """The answers held for each service."""
        if self.fail:
            raise self.fail()
        return {s.name: tuple(self.answers.get(s.name, {}).values()) for s in services}

    async def _apply(self, plan: Plan) -> Receipt:
        """Store the plan's ``after`` answers; delete the ``before`` of deletions."""
        if self.fail:
            raise self.fail()
        self.applies += 1
        for change in plan.changes:
            if change.service.name in self.refuse:
                continue
            held = self.answers.setdefault(change.service.name, {})
            if change.after is None:
                held.pop(change.before.site if change.before else None, None)
            else:
                held[change.after.site] = change.after
        refused = self.refuse & {s.name for s in plan.services}
        if refused:
            raise PermanentProviderError(
                f"refused {', '.join(sorted(refused))}", kind="refused", services=refused
            )
        return Receipt(self.name, (f"c{self.applies}",), 0.0)

    def weights(self, service: str) -> dict[str | None, int | None]:
        return {site: a.weight for site, a in self.answers.get(service, {}).items()}
