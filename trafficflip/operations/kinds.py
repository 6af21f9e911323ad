"""The journal event kinds the operator surface reacts to, in one place.

The decision core is gaining its own ``EventKind`` enum (``decision/model.py``); when it
lands, this module becomes ``from trafficflip.decision.model import EventKind as Kind``.
Members are ``StrEnum``s, so they compare equal to the kind strings in journal entries.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    FAILOVER = "failover"
    ALL_DOWN = "all_down"
    RECOVERED = "recovered"
    FAILBACK_STARTED = "failback_started"
    RAMP_STEP = "ramp_step"
    FAILBACK_COMPLETED = "failback_completed"
    FAILBACK_ABORTED = "failback_aborted"
    PLANNED_MOVE_STARTED = "planned_move_started"
    PLANNED_MOVE_COMPLETED = "planned_move_completed"
    DRAIN_STARTED = "drain_started"
    DRAIN_COMPLETED = "drain_completed"
    COMMAND = "command"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_RECOVERED = "provider_recovered"
