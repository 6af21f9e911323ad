"""What the AWS adapters share: a client with our retry policy and one error translation.

Not an adapter itself (it registers nothing); ``route53`` and ``elbv2`` import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from trafficflip.errors import PermanentProviderError, TransientProviderError

T = TypeVar("T")
# Codes every AWS API uses for "slow down" or "try again"; adapters add their own.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
    }
)


def client(service: str, region: str, timeout: float) -> Any:
    """A boto3 client from the standard credential and endpoint chain."""
    config = botocore.config.Config(
        # Backoff is ours (jittered, aware of adapter-specific codes), not botocore's.
        retries={"total_max_attempts": 1},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    # The stubs type each service name as a literal; the adapters name theirs.
    session: Any = boto3.session.Session()
    return session.client(service, region_name=region, config=config)


async def call(
    label: str, fn: Callable[..., T], transient: Collection[str] = THROTTLING_CODES, **kwargs: Any
) -> T:
    """Run a blocking boto3 call in a thread; translate its errors at this edge.

    ``transient`` error codes and network errors become ``TransientProviderError``, any other
    AWS error ``PermanentProviderError``, each with the code as ``kind`` and AWS's message.
    """
    try:
        return await asyncio.to_thread(fn, **kwargs)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
        text = f"{label}: {code}: {message}"
        if code in transient:
            raise TransientProviderError(text, kind=code) from exc
        raise PermanentProviderError(text, kind=code) from exc
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise TransientProviderError(f"{label}: {exc}", kind="network") from exc
