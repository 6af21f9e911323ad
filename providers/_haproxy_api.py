"""The HAProxy runtime API: one connection per batch of ``;``-separated commands.

Knows HAProxy's wire format only; the provider (``haproxy``) decides what to send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from trafficflip.backend.budget import CallBudget
from trafficflip.config.schema import split_host_port
from trafficflip.errors import PermanentProviderError, TransientProviderError


class InstanceConfig(BaseModel):
    """One HAProxy process: its stats socket (``level admin``) as a path or ``host:port``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    socket: str | None = None
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> InstanceConfig:
        if (self.socket is None) == (self.address is None):
            raise ValueError("set socket (a unix socket path) or address (host:port), not both")
        return self

    @property
    def label(self) -> str:
        return self.socket or str(self.address)


class RuntimeApi:
    """The runtime API of one HAProxy instance: one connection per batch of commands."""

    def __init__(
        self, endpoint: InstanceConfig, timeout: float, budget: CallBudget | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.label = endpoint.label
        self.budget = budget or CallBudget(None)

    async def run(
        self, commands: Sequence[str], guard: Callable[[float], None] | None = None
    ) -> list[str]:
        """Send ``commands`` as one ``;``-separated line; return one response per command.

        An empty response means success for a ``set`` command. Unreachable or silent
        instances raise ``TransientProviderError`` (a restart makes the socket vanish briefly).
        ``guard`` (a write's) is asked with the exchange's timeout after the budget's wait,
        right before connecting: the timeout bounds connect, send and answer together.
        """
        line = (";".join(commands) + "\n").encode()
        await self.budget.spend()
        if guard is not None:
            guard(self.timeout)
        try:
            raw = await asyncio.wait_for(self._exchange(line), self.timeout)
        except TimeoutError:
            raise TransientProviderError(
                f"haproxy {self.label}: no answer within {self.timeout:g}s", kind="unreachable"
            ) from None
        except OSError as exc:
            raise TransientProviderError(
                f"haproxy {self.label}: {exc.strerror or exc}", kind="unreachable"
            ) from exc
        responses = split_responses(raw.decode(errors="replace"))
        if len(responses) != len(commands):
            raise PermanentProviderError(
                f"haproxy {self.label}: unexpected answer {raw[:200]!r}", kind="protocol"
            )
        return responses

    async def _exchange(self, data: bytes) -> bytes:
        if self.endpoint.socket is not None:
            reader, writer = await asyncio.open_unix_connection(self.endpoint.socket)
        else:
            host, port = split_host_port(str(self.endpoint.address))
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(data)
            await writer.drain()
            # Without "prompt" HAProxy answers every command and closes the connection.
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def split_responses(text: str) -> list[str]:
    """Split the runtime API's output: every response ends with an empty line."""
    responses: list[str] = []
    current: list[str] = []
    for line in text.split("\n")[:-1]:
        if line:
            current.append(line)
        else:
            responses.append("\n".join(current))
            current = []
    if current:
        responses.append("\n".join(current))
    return responses


def parse_servers_state(text: str) -> dict[str, int]:
    """``show servers state`` -> server name -> user weight, columns found by their header."""
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if header is None:
        raise ValueError(text.strip() or "empty answer")
    columns = lines[header][2:].split()
    name_at, weight_at = columns.index("srv_name"), columns.index("srv_uweight")
    return {
        fields[name_at]: int(fields[weight_at])
        for fields in (line.split() for line in lines[header + 1 :])
        if len(fields) > weight_at
    }
