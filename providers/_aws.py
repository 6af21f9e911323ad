"""What the AWS adapters share: a client with our retry policy and one error translation.

Not an adapter itself (it registers nothing); ``route53`` and ``elbv2`` import it.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from trafficflip.backend.budget import CallBudget
from trafficflip.errors import PermanentProviderError, TransientProviderError

T = TypeVar("T")
# Codes AWS APIs answer when a quota is exceeded: kind "throttled", with any retry-after.
THROTTLED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "SlowDown",
    }
)
# Codes every AWS API uses for "try again"; adapters add their own.
THROTTLING_CODES = THROTTLED_CODES | {"ServiceUnavailable", "InternalError", "InternalFailure"}
# Without a retry-after, the budget holds one or two calls' worth of the quota (AWS refills
# its token bucket continuously: Route53's 5 calls/s is a token every 0.2 s), jittered so
# that several trafficflip processes sharing an account do not return together. A longer
# hold would make a throttled failover wait past its worth (a second per throttle).
THROTTLE_HOLD = (0.2, 0.4)


def call_time(timeout: float) -> float:
    """The longest one call of a client made with ``timeout`` may take: one attempt, its
    connect and its read timeouts (a request is on the wire before the read begins)."""
    return 2 * timeout


def bounded_timeout(configured: float, seconds: float) -> float:
    """The client timeout that keeps one call within ``seconds``."""
    return min(configured, seconds / 2)


def client(service: str, region: str, timeout: float) -> Any:
    """A boto3 client from the standard credential and endpoint chain."""
    config = botocore.config.Config(
        # One attempt: botocore's retries would hide a throttling answer and spend the
        # account's quota again; backoff and re-batching belong to the engine's provider sync.
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    # The stubs type each service name as a literal; the adapters name theirs.
    session: Any = boto3.session.Session()
    return session.client(service, region_name=region, config=config)


async def call(
    label: str,
    budget: CallBudget,
    fn: Callable[..., T],
    transient: Collection[str] = THROTTLING_CODES,
    *,
    guard: Callable[[], None] | None = None,
    **kwargs: Any,
) -> T:
    """Spend the budget, run a blocking boto3 call in a thread; translate its errors here.

    ``guard`` (a write's) is asked after the budget's wait, right before the call is sent:
    the lease may have run out while the call waited for its turn in the quota.

    A throttling answer becomes ``TransientProviderError(kind="throttled")`` with the
    backend's retry-after, and holds the budget; other ``transient`` codes and network
    errors become ``TransientProviderError``, any other AWS error ``PermanentProviderError``,
    each with the code as ``kind`` and AWS's message.
    """
    await budget.spend()
    if guard is not None:
        guard()
    try:
        return await asyncio.to_thread(fn, **kwargs)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
        text = f"{label}: {code}: {message}"
        meta = exc.response.get("ResponseMetadata", {})
        if code in THROTTLED_CODES or meta.get("HTTPStatusCode") == 429:
            retry_after = parse_retry_after(meta.get("HTTPHeaders", {}).get("retry-after"))
            budget.hold(retry_after if retry_after is not None else random.uniform(*THROTTLE_HOLD))
            raise TransientProviderError(text, kind="throttled", retry_after=retry_after) from exc
        if code in transient:
            raise TransientProviderError(text, kind=code) from exc
        raise PermanentProviderError(text, kind=code) from exc
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise TransientProviderError(f"{label}: {exc}", kind="network") from exc


def parse_retry_after(value: str | None) -> float | None:
    """An HTTP Retry-After (RFC 9110: seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
