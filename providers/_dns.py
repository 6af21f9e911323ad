"""The DNS side of the RFC 2136 provider: TSIG keys, a TCP client, UPDATE messages.

Everything here speaks dnspython and knows nothing of state or decisions; the provider
(``rfc2136``) decides what to send.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dns.asyncquery
import dns.exception
import dns.inet
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from trafficflip.config.schema import split_host_port
from trafficflip.decision.plan import Change
from trafficflip.errors import (
    ConfigError,
    PermanentProviderError,
    TransientProviderError,
)

# A DNS message over TCP is prefixed by a 16-bit length.
MAX_MESSAGE = 65535
# Header, zone section and a TSIG record (names up to 255 bytes, a SHA-512 MAC) fit in this.
MESSAGE_OVERHEAD = 1024
SERIAL_SPACE = 2**32
DNS_PORT = 53

TSIG_ERRORS: dict[type[Exception], str] = {
    dns.tsig.PeerBadSignature: "BADSIG",
    dns.tsig.PeerBadKey: "BADKEY",
    dns.tsig.PeerBadTime: "BADTIME",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
    dns.tsig.BadSignature: "BADSIG",
}
# What an operator should look at, by rcode or TSIG error.
HINTS = {
    "BADSIG": "the server rejected the signature (wrong secret or algorithm)",
    "BADKEY": "the server does not know this key name",
    "BADTIME": "the clocks of this host and the server differ too much",
    "REFUSED": (
        "the server does not allow this update or query: the zone's update-policy (or "
        "allow-update) does not grant this key this name and type, or the key is wrong or missing"
    ),
    "NOTAUTH": "the server is not authoritative for the zone or rejected the key",
    "NOTZONE": "a record is outside the zone the update names",
    "SERVFAIL": "the server failed to process the request (see its log)",
}

Algorithm = Literal[
    "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5"
]


class TsigConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    algorithm: Algorithm = "hmac-sha256"
    secret: SecretStr | None = None
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> TsigConfig:
        # After-validation sees SecretStr, so no error can echo the secret itself.
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError(
                "set exactly one of secret (or TRAFFICFLIP_PROVIDERS__<NAME>__TSIG__SECRET) "
                "and secret_file"
            )
        if self.secret is not None:
            check_base64(self.secret.get_secret_value(), "secret")
        return self

    @field_validator("secret_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        # Read here, not only when the provider is built, so that an offline check-config
        # catches a secret file that is missing or not base64 (the message never quotes it).
        if path is not None:
            try:
                secret = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None
            check_base64(secret, "secret_file")
        return path


def check_base64(value: str, what: str) -> None:
    try:
        base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise ValueError(f"tsig {what} is not valid base64") from None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        return cls(*split_host_port(value, DNS_PORT))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SecretKey(dns.tsig.Key):
    """A TSIG key whose ``repr`` leaves the secret out (dnspython's prints it in base64)."""

    def __repr__(self) -> str:
        return f"<TSIG key name='{self.name}' algorithm='{self.algorithm}' secret=**********>"

    __str__ = __repr__


Lookup = Callable[[str], Awaitable[str]]


class DnsClient:
    """Sends one message over TCP, signed with the key, and returns the response.

    Library and network failures are translated here: no response is transient, a TSIG
    error from the peer is permanent. The response's rcode is the caller's to check.
    ``timeout`` bounds the server's host name lookup and the exchange, each.
    """

    def __init__(
        self, timeout: float, key: dns.tsig.Key | None, lookup: Lookup | None = None
    ) -> None:
        self.timeout = timeout
        self.key = key
        self.lookup = lookup or resolve

    @property
    def key_name(self) -> str:
        return self.key.name.to_text() if self.key else "(none)"

    async def exchange(
        self,
        message: dns.message.Message,
        endpoint: Endpoint,
        what: str,
        *,
        sign: bool = True,
        guard: Callable[[float], None] | None = None,
    ) -> dns.message.Message:
        """Send ``message`` and return the response. ``guard`` (an UPDATE's) is asked with
        the exchange's timeout after the server's address is known, right before sending."""
        if self.key is not None and sign:
            message.use_tsig(self.key)
        where = f"{what} server={endpoint} key={self.key_name if sign else '(none)'}"
        host = await self._address(endpoint, where)
        if guard is not None:
            guard(self.timeout)
        try:
            return await dns.asyncquery.tcp(message, host, timeout=self.timeout, port=endpoint.port)
        except (dns.exception.Timeout, OSError, EOFError) as exc:
            text = str(exc) or type(exc).__name__
            raise TransientProviderError(f"rfc2136 {where}: {text}", kind="network") from exc
        except tuple(TSIG_ERRORS) as exc:
            name = TSIG_ERRORS[type(exc)]
            hint = HINTS.get(name, "the signature was not accepted")
            raise PermanentProviderError(
                f"rfc2136 {where}: TSIG error {name}: {hint}", kind=name
            ) from exc
        except dns.exception.DNSException as exc:
            raise PermanentProviderError(f"rfc2136 {where}: {exc}", kind="FORMERR") from exc

    async def _address(self, endpoint: Endpoint, where: str) -> str:
        """The server's address; a lookup that hangs (a dead resolver) is cut at ``timeout``."""
        try:
            return await asyncio.wait_for(self.lookup(endpoint.host), self.timeout)
        except TimeoutError:
            raise TransientProviderError(
                f"rfc2136 {where}: looking up {endpoint.host} took more than {self.timeout:g}s",
                kind="network",
            ) from None
        except OSError as exc:
            text = f"looking up {endpoint.host}: {exc.strerror or exc}"
            raise TransientProviderError(f"rfc2136 {where}: {text}", kind="network") from exc


async def resolve(host: str) -> str:
    """dnspython needs an address; a host name is resolved on every call (it may move)."""
    try:
        dns.inet.af_for_address(host)
        return host
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    return str(infos[0][4][0])


def update_message(zone: str, changes: Iterable[Change]) -> dns.update.UpdateMessage:
    message = dns.update.UpdateMessage(zone)
    for change in changes:
        service, after = change.service, change.after
        assert after is not None
        name, rdtype = dns_name(str(service.record)), str(service.type)
        if change.before is None:
            message.absent(name, rdtype)
        else:
            # Value-dependent: the RRset must hold exactly what we read, no more, no less.
            message.present(name, *rdatas(rdtype, change.before.targets))
        ttl = after.ttl or service.ttl or 0
        # Delete-and-add inside one UPDATE is atomic: the name is never without an answer.
        message.replace(name, ttl, *rdatas(rdtype, after.targets))
    return message


def permission_probe(zone: str, records: Sequence[tuple[str, str, int, Sequence[str]]]) -> Any:
    """An UPDATE that can never change anything, to learn whether the key may make it.

    Each (name, type, ttl, values) is written as trafficflip writes it (the RRset replaced),
    behind two prerequisites that cannot both hold: the RRset exists, and it does not. BIND
    (9.18, measured) checks the key's permission (update-policy, allow-update) before the
    prerequisites: REFUSED means the key may not; NXRRSET or YXRRSET means it may.
    """
    message = dns.update.UpdateMessage(zone)
    for name, rdtype, ttl, values in records:
        message.present(dns_name(name), rdtype)
        message.absent(dns_name(name), rdtype)
        message.replace(dns_name(name), ttl, *rdatas(rdtype, values))
    return message


def batches(zone: str, changes: Sequence[Change]) -> list[list[Change]]:
    """Pack changes into as few UPDATEs as fit one DNS message, by an upper bound of size."""
    budget = MAX_MESSAGE - MESSAGE_OVERHEAD
    batches: list[list[Change]] = [[]]
    size = 0
    for change in changes:
        need = wire_bound(zone, change)
        if batches[-1] and size + need > budget:
            batches.append([])
            size = 0
        batches[-1].append(change)
        size += need
    return [b for b in batches if b]


def wire_bound(zone: str, change: Change) -> int:
    """Bytes a change takes at most. Owner names compress against the zone in the zone
    section, but a name past offset 16383 cannot be pointed to, so count it in every RR."""
    service = change.service
    owner = len(dns_name(str(service.record)).to_digestable()) - len(dns_name(zone).to_digestable())
    rdtype = str(service.type)
    before = change.before.targets if change.before else frozenset()
    after = change.after.targets if change.after else frozenset()
    # An absent-or-present prerequisite and the delete carry no data; each RR has a
    # pointer to the zone (2) and type, class, ttl and rdlength (10).
    sizes = [0, 0] + [rdata_size(rdtype, v) for v in (*before, *after)]
    return sum(owner + 12 + size for size in sizes)


def rdata_size(rdtype: str, value: str) -> int:
    return len(dns.rdata.from_text(dns.rdataclass.IN, rdtype, value).to_wire() or b"")


def rdatas(rdtype: str, values: Iterable[str]) -> list[dns.rdata.Rdata]:
    return [dns.rdata.from_text(dns.rdataclass.IN, rdtype, v) for v in sorted(values)]


def tsig_key(provider: str, tsig: TsigConfig | None) -> dns.tsig.Key | None:
    if tsig is None:
        return None
    if tsig.secret is not None:
        secret = tsig.secret.get_secret_value().strip()
    else:
        assert tsig.secret_file is not None
        secret = read_secret(provider, tsig.secret_file)
    return SecretKey(tsig.name, secret, tsig.algorithm)


def read_secret(provider: str, path: Path) -> str:
    key = f"providers.{provider}.tsig.secret_file"
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror}"]) from None
    try:
        check_base64(secret, "secret_file")
    except ValueError as exc:
        raise ConfigError([f"{key}: {exc}"]) from None
    return secret


def dns_name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def find(response: dns.message.Message, name: str | None, rdtype: str | None) -> Any:
    wanted = dns.rdatatype.from_text(str(rdtype))
    for rrset in response.answer:
        if rrset.name == dns_name(str(name)) and rrset.rdtype == wanted:
            return rrset
    return None


def serial_reached(have: int, want: int) -> bool:
    """RFC 1982 serial arithmetic: ``have`` is ``want`` or later, modulo 2**32."""
    return (have - want) % SERIAL_SPACE < SERIAL_SPACE // 2
