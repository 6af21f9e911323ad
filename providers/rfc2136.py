"""RFC 2136 dynamic updates signed with TSIG (BIND; also Knot, PowerDNS): one RRset per service.

DNS has no weights, so a service is one RRset holding the targets of every site whose share
is above 0: a failback ramp is served as a mixed answer until its last step. State is read
with TCP queries for the managed RRsets only (never a zone transfer); every change is guarded
by a prerequisite on the RRset it replaces, so a concurrent hand edit is detected, not lost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from trafficflip.durations import Duration
from trafficflip.errors import (
    ConfigError,
    PermanentProviderError,
    TransientProviderError,
    UnsafePlanError,
)
from trafficflip.model import Answer
from trafficflip.plan import Action, Change, Plan
from trafficflip.provider import Provider, Receipt
from trafficflip.settings import ServiceConfig, split_host_port

log = logging.getLogger("trafficflip.providers.rfc2136")
T = TypeVar("T")

DNS_PORT = 53
# A DNS message over TCP is prefixed by a 16-bit length.
MAX_MESSAGE = 65535
# Header, zone section and a TSIG record (names up to 255 bytes, a SHA-512 MAC) fit in this.
MESSAGE_OVERHEAD = 1024
# Answers are trusted while the serial holds (every dynamic update moves it), but a server
# that changes data without moving it (a zone file reloaded unchanged) is caught this soon.
CACHE_MAX_AGE = 300.0
# BIND allows 150 TCP clients by default; a read uses a few connections at once.
READ_CONCURRENCY = 8
# A hand edit racing our update costs one re-read; more rounds than this means a fight.
MAX_REBASES = 3
SERIAL_SPACE = 2**32
REMEMBERED_CHANGES = 256
CONFLICT_RCODES = {dns.rcode.NXRRSET, dns.rcode.YXRRSET}
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
    "REFUSED": "the server does not allow this update or query (unsigned or wrong key?)",
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
            _check_base64(self.secret.get_secret_value(), "secret")
        return self


class Rfc2136Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["rfc2136"]
    server: str
    tsig: TsigConfig | None = None
    timeout: Duration = 2.0
    verify: list[str] = []

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        split_host_port(value, DNS_PORT)
        return value

    @field_validator("verify", mode="before")
    @classmethod
    def _verify(cls, values: Any) -> Any:
        # An environment variable arrives as one string: "a:53,b:53".
        if isinstance(values, str):
            values = [v for v in values.replace(",", " ").split() if v]
        for value in values if isinstance(values, list) else []:
            split_host_port(str(value), DNS_PORT)
        return values


def _check_base64(value: str, what: str) -> None:
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


@dataclass
class ZoneCache:
    """A zone's answers as read or written at one SOA serial."""

    serial: int
    answers: dict[tuple[str, str], tuple[Answer, ...]] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.since


class DnsClient:
    """Sends one message over TCP, signed with the key, and returns the response.

    Library and network failures are translated here: no response is transient, a TSIG
    error from the peer is permanent. The response's rcode is the caller's to check.
    """

    def __init__(self, timeout: float, key: dns.tsig.Key | None) -> None:
        self.timeout = timeout
        self.key = key

    @property
    def key_name(self) -> str:
        return self.key.name.to_text() if self.key else "(none)"

    async def exchange(
        self, message: dns.message.Message, endpoint: Endpoint, what: str, *, sign: bool = True
    ) -> dns.message.Message:
        if self.key is not None and sign:
            message.use_tsig(self.key)
        where = f"{what} server={endpoint} key={self.key_name if sign else '(none)'}"
        try:
            host = await _resolve(endpoint.host)
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


async def _resolve(host: str) -> str:
    """dnspython needs an address; a host name is resolved on every call (it may move)."""
    try:
        dns.inet.af_for_address(host)
        return host
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    return str(infos[0][4][0])


class Rfc2136Provider(Provider):
    """Services as RRsets in zones of an RFC 2136 primary, updated atomically per zone."""

    TYPE = "rfc2136"
    KIND = "dns"
    SUPPORTS_WEIGHTS = False
    Config = Rfc2136Config

    def __init__(self, name: str, config: Rfc2136Config, client: DnsClient) -> None:
        super().__init__(name, config)
        self.client = client
        self.server = Endpoint.parse(config.server)
        self.verify = [Endpoint.parse(v) for v in config.verify] or [self.server]
        self._cache: dict[str, ZoneCache] = {}
        # Which services each change wrote and what we last wrote for each, for confirm().
        self._written: dict[str, tuple[ServiceConfig, ...]] = {}
        self._latest: dict[str, Answer] = {}

    @classmethod
    def create(cls, name: str, config: Any) -> Rfc2136Provider:
        """Build the provider with its TSIG key; the secret is read here, never logged."""
        return cls(name, config, DnsClient(config.timeout, _key(name, config.tsig)))

    @classmethod
    def validate_service(cls, service: ServiceConfig, config: Any) -> list[tuple[str, str]]:
        """An UPDATE names its zone, and a zone apex holds SOA and NS, so never a CNAME."""
        if service.zone is None or service.record is None:
            return []  # the core reports missing keys
        if service.type == "CNAME" and _name(service.record) == _name(service.zone):
            return [("record", "a CNAME cannot be at the zone apex (it holds SOA and NS)")]
        return []

    # -- reading -------------------------------------------------------------------------

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        """The RRset of each service on the primary: ``(Answer,)``, or ``()`` when absent.

        TCP queries, never a zone transfer, never a write. Answers are kept per zone with
        the SOA serial they were read at: while the serial has not moved nothing changed,
        so a reconcile costs one SOA query per zone. A name that holds a CNAME where the
        service wants addresses is someone else's record: reported, never replaced.
        """
        by_zone: dict[str, list[ServiceConfig]] = defaultdict(list)
        for service in services:
            by_zone[_zone(service)].append(service)
        answers: dict[str, tuple[Answer, ...]] = {}
        for zone, members in by_zone.items():
            answers.update(await self._read_zone(zone, members))
        return answers

    async def _read_zone(
        self, zone: str, services: Sequence[ServiceConfig]
    ) -> dict[str, tuple[Answer, ...]]:
        # The serial is read first: answers read after it are that state or newer, and
        # anything newer moves the serial, so the next read starts afresh.
        serial = await self._serial(self.server, zone)
        cache = self._cache.get(zone)
        if cache is None or cache.serial != serial or cache.age() > CACHE_MAX_AGE:
            cache = self._cache[zone] = ZoneCache(serial)
        missing = [s for s in services if _rrset_key(s) not in cache.answers]
        found = await _bounded(
            (self._read_rrset(self.server, s) for s in missing), READ_CONCURRENCY
        )
        cache.answers.update(zip(map(_rrset_key, missing), found, strict=True))
        return {s.name: cache.answers[_rrset_key(s)] for s in services}

    async def _read_rrset(self, endpoint: Endpoint, service: ServiceConfig) -> tuple[Answer, ...]:
        query = dns.message.make_query(str(service.record), str(service.type))
        query.flags &= ~dns.flags.RD
        response = await self._ask(query, endpoint, str(service.zone), "query")
        rrset = _find(response, service.record, service.type)
        if rrset is None:
            _check_cname(response, service)
            return ()
        values = frozenset(_value(r, service) for r in rrset)
        return (Answer(None, values, None, rrset.ttl),)

    async def _serial(self, endpoint: Endpoint, zone: str) -> int:
        query = dns.message.make_query(zone, "SOA")
        query.flags &= ~dns.flags.RD
        response = await self._ask(query, endpoint, zone, "soa")
        rrset = _find(response, zone, "SOA")
        if rrset is None:
            raise PermanentProviderError(
                f"rfc2136 soa server={endpoint} zone={zone}: no SOA, the zone is not served there",
                kind="NOTAUTH",
            )
        return int(rrset[0].serial)

    async def _ask(
        self, query: dns.message.Message, endpoint: Endpoint, zone: str, what: str
    ) -> dns.message.Message:
        # Other authoritative servers (secondaries) need not know the update key.
        sign = endpoint == self.server
        response = await self.client.exchange(query, endpoint, f"{what} zone={zone}", sign=sign)
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise self._refused(rcode, endpoint, zone, what)
        if not response.flags & dns.flags.AA:
            # A resolver's cached answer would make every plan wrong: ask the authority.
            raise PermanentProviderError(
                f"rfc2136 {what} server={endpoint} zone={zone}: answer is not authoritative",
                kind="NOTAUTH",
            )
        return response

    def _refused(
        self, rcode: dns.rcode.Rcode, endpoint: Endpoint, zone: str, what: str
    ) -> PermanentProviderError:
        name = dns.rcode.to_text(rcode)
        return PermanentProviderError(
            f"rfc2136 {what} server={endpoint} zone={zone} key={self.client.key_name}: "
            f"{name}: {HINTS.get(name, 'the server refused the request')}",
            kind=name,
        )

    # -- applying ------------------------------------------------------------------------

    async def _apply(self, plan: Plan) -> Receipt:
        """One UPDATE per zone (split only past the message size), each change guarded by a
        prerequisite on the RRset it replaces; a conflict is re-read and applied on the new
        basis. Change ids are the zones' new SOA serials, ``zone@serial``. Messages are built
        and signed afresh on every call, so a retry never resends a signed message.
        """
        by_zone: dict[str, list[Change]] = defaultdict(list)
        for change in plan.changes:
            _check_writable(change)
            by_zone[_zone(change.service)].append(change)
        change_ids = []
        for zone, changes in by_zone.items():
            serial = await self._update_zone(zone, changes)
            change_ids.append(f"{zone}@{serial}")
            self._written[change_ids[-1]] = tuple(c.service for c in changes)
        while len(self._written) > REMEMBERED_CHANGES:
            self._written.pop(next(iter(self._written)))  # older ones: confirmed by serial
        submitted_at = time.time()
        in_sync = await self._in_sync(change_ids)
        return Receipt(self.name, tuple(change_ids), submitted_at, in_sync)

    async def _update_zone(self, zone: str, changes: list[Change]) -> int:
        cache = self._cache.pop(zone, None)
        pending, sent, landed = changes, 0, list[Change]()
        for _ in range(MAX_REBASES + 1):
            conflicts: list[Change] = []
            for batch in _batches(zone, pending):
                if await self._submit(zone, batch):
                    sent, landed = sent + 1, landed + batch
                else:
                    conflicts.extend(batch)
            pending = await self._rebase(zone, conflicts) if conflicts else []
            if not pending:
                serial = await self._serial(self.server, zone)
                self._recache(zone, cache if not conflicts else None, sent, serial, landed)
                return serial
        raise TransientProviderError(
            f"rfc2136 update server={self.server} zone={zone}: the records kept changing "
            f"under the update ({MAX_REBASES} re-reads)",
            kind="NXRRSET",
        )

    def _recache(
        self, zone: str, cache: ZoneCache | None, sent: int, serial: int, landed: list[Change]
    ) -> None:
        """Keep the zone's answers if the serial moved by our messages alone (BIND adds 1 per
        UPDATE); any other step means someone else wrote too, so the next read starts afresh."""
        self._latest.update((c.service.name, c.after) for c in landed if c.after)
        if cache is None or (cache.serial + sent) % SERIAL_SPACE != serial:
            return
        cache.serial = serial
        cache.answers.update((_rrset_key(c.service), (c.after,)) for c in landed if c.after)
        self._cache[zone] = cache

    async def _submit(self, zone: str, changes: Sequence[Change]) -> bool:
        """Send one UPDATE; False when a prerequisite failed (then nothing was changed)."""
        message = _update_message(zone, changes)
        response = await self.client.exchange(message, self.server, f"update zone={zone}")
        rcode = response.rcode()
        if rcode in CONFLICT_RCODES:
            log.warning(
                "update_conflict provider=%s zone=%s rcode=%s changes=%d",
                self.name, zone, dns.rcode.to_text(rcode), len(changes),
            )  # fmt: skip
            return False
        if rcode != dns.rcode.NOERROR:
            raise self._refused(rcode, self.server, zone, "update")
        return True

    async def _rebase(self, zone: str, conflicts: Sequence[Change]) -> list[Change]:
        """Re-read the conflicting RRsets; the desired answers stay, their basis changes."""
        actual = await self.read([c.service for c in conflicts])
        rebased = []
        for change in conflicts:
            found = next(iter(actual[change.service.name]), None)
            if found != change.before:
                log.warning(
                    "drift service=%s zone=%s expected=%s found=%s",
                    change.service.name, zone, _show(change.before), _show(found),
                )  # fmt: skip
            if found != change.after:
                action: Action = "create" if found is None else "update"
                rebased.append(Change(change.service, action, found, change.after))
        return rebased

    # -- confirming ----------------------------------------------------------------------

    async def confirm(self, receipt: Receipt) -> bool:
        """True once every ``verify`` server has the zone's new serial (or a later one) and
        holds the RRsets as we last wrote them. Read-only; safe to call any number of times.

        The primary's NOERROR to a prerequisite-guarded UPDATE already proves its RRsets, so
        only other servers are asked for them.
        """
        return await self._in_sync(receipt.change_ids)

    async def _in_sync(self, change_ids: Iterable[str]) -> bool:
        for change_id in change_ids:
            zone, _, serial = change_id.rpartition("@")
            services = self._written.get(change_id, ())
            for endpoint in self.verify:
                if not await self._reached(endpoint, zone, int(serial), services):
                    return False
            self._written.pop(change_id, None)
        return True

    async def _reached(
        self, endpoint: Endpoint, zone: str, serial: int, services: Sequence[ServiceConfig]
    ) -> bool:
        have = await self._serial(endpoint, zone)
        if not _serial_reached(have, serial):
            log.info("lagging server=%s zone=%s serial=%d want=%d", endpoint, zone, have, serial)
            return False
        if endpoint == self.server:
            return True
        answers = await _bounded(
            (self._read_rrset(endpoint, s) for s in services), READ_CONCURRENCY
        )
        for service, answer in zip(services, answers, strict=True):
            latest = self._latest.get(service.name)
            if latest is not None and answer != (latest,):
                log.info("lagging server=%s zone=%s service=%s", endpoint, zone, service.name)
                return False
        return True


# -- messages ------------------------------------------------------------------------------


def _check_writable(change: Change) -> None:
    """Deleting or emptying an RRset would send the name's traffic nowhere."""
    if change.after is None or not change.after.targets:
        raise UnsafePlanError(
            f"service {change.service.name}: refusing to delete or empty its RRset "
            f"{change.service.record} {change.service.type}"
        )


def _update_message(zone: str, changes: Iterable[Change]) -> dns.update.UpdateMessage:
    message = dns.update.UpdateMessage(zone)
    for change in changes:
        service, after = change.service, change.after
        assert after is not None
        name, rdtype = _name(str(service.record)), str(service.type)
        if change.before is None:
            message.absent(name, rdtype)
        else:
            # Value-dependent: the RRset must hold exactly what we read, no more, no less.
            message.present(name, *_rdatas(rdtype, change.before.targets))
        ttl = after.ttl or service.ttl or 0
        # Delete-and-add inside one UPDATE is atomic: the name is never without an answer.
        message.replace(name, ttl, *_rdatas(rdtype, after.targets))
    return message


def _batches(zone: str, changes: Sequence[Change]) -> list[list[Change]]:
    """Pack changes into as few UPDATEs as fit one DNS message, by an upper bound of size."""
    budget = MAX_MESSAGE - MESSAGE_OVERHEAD
    batches: list[list[Change]] = [[]]
    size = 0
    for change in changes:
        need = _wire_bound(zone, change)
        if batches[-1] and size + need > budget:
            batches.append([])
            size = 0
        batches[-1].append(change)
        size += need
    return [b for b in batches if b]


def _wire_bound(zone: str, change: Change) -> int:
    """Bytes a change takes at most. Owner names compress against the zone in the zone
    section, but a name past offset 16383 cannot be pointed to, so count it in every RR."""
    service = change.service
    owner = len(_name(str(service.record)).to_digestable()) - len(_name(zone).to_digestable())
    rdtype = str(service.type)
    before = change.before.targets if change.before else frozenset()
    after = change.after.targets if change.after else frozenset()
    # An absent-or-present prerequisite and the delete carry no data; each RR has a
    # pointer to the zone (2) and type, class, ttl and rdlength (10).
    sizes = [0, 0] + [_rdata_size(rdtype, v) for v in (*before, *after)]
    return sum(owner + 12 + size for size in sizes)


def _rdata_size(rdtype: str, value: str) -> int:
    return len(dns.rdata.from_text(dns.rdataclass.IN, rdtype, value).to_wire() or b"")


def _rdatas(rdtype: str, values: Iterable[str]) -> list[dns.rdata.Rdata]:
    return [dns.rdata.from_text(dns.rdataclass.IN, rdtype, v) for v in sorted(values)]


# -- helpers -------------------------------------------------------------------------------


def _key(provider: str, tsig: TsigConfig | None) -> dns.tsig.Key | None:
    if tsig is None:
        return None
    if tsig.secret is not None:
        secret = tsig.secret.get_secret_value().strip()
    else:
        assert tsig.secret_file is not None
        secret = _read_secret(provider, tsig.secret_file)
    return dns.tsig.Key(tsig.name, secret, tsig.algorithm)


def _read_secret(provider: str, path: Path) -> str:
    key = f"providers.{provider}.tsig.secret_file"
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror}"]) from None
    try:
        _check_base64(secret, "secret_file")
    except ValueError as exc:
        raise ConfigError([f"{key}: {exc}"]) from None
    return secret


async def _bounded(calls: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Await ``calls`` with at most ``limit`` running; the first error cancels the rest."""
    semaphore = asyncio.Semaphore(limit)

    async def run(call: Awaitable[T]) -> T:
        async with semaphore:
            return await call

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(call)) for call in calls]
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None  # the group's tasks are plain, never groups
    return [task.result() for task in tasks]


def _zone(service: ServiceConfig) -> str:
    return _name(str(service.zone)).to_text()


def _rrset_key(service: ServiceConfig) -> tuple[str, str]:
    return (_name(str(service.record)).to_text().lower(), str(service.type))


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def _find(response: dns.message.Message, name: str | None, rdtype: str | None) -> Any:
    wanted = dns.rdatatype.from_text(str(rdtype))
    for rrset in response.answer:
        if rrset.name == _name(str(name)) and rrset.rdtype == wanted:
            return rrset
    return None


def _check_cname(response: dns.message.Message, service: ServiceConfig) -> None:
    if service.type != "CNAME" and _find(response, service.record, "CNAME") is not None:
        raise PermanentProviderError(
            f"rfc2136 service {service.name}: {service.record} holds a CNAME that "
            f"trafficflip did not write; it will not replace it with {service.type} records",
            kind="CNAME",
        )


def _value(rdata: Any, service: ServiceConfig) -> str:
    # Names compare case-insensitively in DNS; the config writes them in lower case.
    text = str(rdata.to_text())
    return text.lower() if service.type == "CNAME" else text


def _serial_reached(have: int, want: int) -> bool:
    """RFC 1982 serial arithmetic: ``have`` is ``want`` or later, modulo 2**32."""
    return (have - want) % SERIAL_SPACE < SERIAL_SPACE // 2


def _show(answer: Answer | None) -> str:
    return ",".join(sorted(answer.targets)) if answer else "(none)"
