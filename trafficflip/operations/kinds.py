"""The journal event kinds the operator surface reacts to: the decision core's enum."""

from __future__ import annotations

from trafficflip.decision.model import EventKind as Kind

__all__ = ["Kind"]
