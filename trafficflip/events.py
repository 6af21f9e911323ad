"""The kinds of journal event: one vocabulary for the journal, the log, metrics and webhooks."""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """Every kind of journal entry; notification targets filter on these."""

    INITIAL = "initial"
    FAILOVER = "failover"
    SITE_OUT = "site_out"
    ALL_DOWN = "all_down"
    RECOVERED = "recovered"
    FAILBACK_STARTED = "failback_started"
    FAILBACK_COMPLETED = "failback_completed"
    FAILBACK_ABORTED = "failback_aborted"
    PLANNED_MOVE_STARTED = "planned_move_started"
    PLANNED_MOVE_COMPLETED = "planned_move_completed"
    DRAIN_STARTED = "drain_started"
    DRAIN_COMPLETED = "drain_completed"
    RAMP_STEP = "ramp_step"
    RAMP_CANCELLED = "ramp_cancelled"
    COMMAND = "command"
    MAINTENANCE_STARTED = "maintenance_started"
    MAINTENANCE_ENDED = "maintenance_ended"
    TTL_LOWERING = "ttl_lowering"
    TTL_LOWERED = "ttl_lowered"
    TTL_RESTORED = "ttl_restored"
    PROVIDER_CHANGE = "provider_change"
    DRIFT = "drift"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_RECOVERED = "provider_recovered"
    CONFIG_RELOADED = "config_reloaded"
    SERVICE_ADDED = "service_added"
    SERVICE_REMOVED = "service_removed"
    SITE_REMOVED = "site_removed"
    ERROR = "error"


# Events an operator is woken for: logged at WARNING.
ALARMS = frozenset({EventKind.FAILOVER, EventKind.ALL_DOWN, EventKind.DRIFT})

# What a notification target is told about unless it lists its own ``events``.
NOTIFIED = (
    EventKind.FAILOVER,
    EventKind.FAILBACK_STARTED,
    EventKind.RAMP_STEP,
    EventKind.FAILBACK_COMPLETED,
    EventKind.FAILBACK_ABORTED,
    EventKind.PLANNED_MOVE_STARTED,
    EventKind.PLANNED_MOVE_COMPLETED,
    EventKind.DRAIN_STARTED,
    EventKind.DRAIN_COMPLETED,
    EventKind.ALL_DOWN,
    EventKind.RECOVERED,
    EventKind.COMMAND,
    EventKind.MAINTENANCE_STARTED,
    EventKind.MAINTENANCE_ENDED,
    EventKind.TTL_LOWERED,
    EventKind.TTL_RESTORED,
    EventKind.PROVIDER_ERROR,
    EventKind.PROVIDER_RECOVERED,
    EventKind.CONFIG_RELOADED,
)
