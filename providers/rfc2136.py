"""RFC 2136 dynamic updates signed with TSIG (BIND; also Knot, PowerDNS): one RRset per service.

DNS has no weights, so a service is one RRset holding the targets of every site whose share
is above 0: a failback ramp is served as a mixed answer until its last step. State is read
with TCP queries for the managed RRsets only (never a zone transfer); every change is guarded
by a prerequisite on the RRset it replaces, so a concurrent hand edit is detected, not lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from pydantic import BaseModel, ConfigDict, field_validator

from trafficflip.backend.provider import Provider, Receipt
from trafficflip.config.durations import Duration
from trafficflip.config.schema import ServiceConfig, split_host_port
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Action, Change, Plan
from trafficflip.errors import (
    PermanentProviderError,
    TransientProviderError,
)

from . import _dns as wire

log = logging.getLogger("trafficflip.providers.rfc2136")
T = TypeVar("T")

# Answers are trusted while the serial holds (every dynamic update moves it), but a server
# that changes data without moving it (a zone file reloaded unchanged) is caught this soon.
CACHE_MAX_AGE = 300.0
# BIND allows 150 TCP clients by default; a read uses a few connections at once.
READ_CONCURRENCY = 8
# A hand edit racing our update costs one re-read; more rounds than this means a fight.
MAX_REBASES = 3
REMEMBERED_CHANGES = 256
CONFLICT_RCODES = {dns.rcode.NXRRSET, dns.rcode.YXRRSET}


class Rfc2136Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["rfc2136"]
    server: str
    tsig: wire.TsigConfig | None = None
    timeout: Duration = 2.0
    verify: list[str] = []

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        split_host_port(value, wire.DNS_PORT)
        return value

    @field_validator("verify", mode="before")
    @classmethod
    def _verify(cls, values: Any) -> Any:
        # An environment variable arrives as one string: "a:53,b:53".
        if isinstance(values, str):
            values = [v for v in values.replace(",", " ").split() if v]
        for value in values if isinstance(values, list) else []:
            split_host_port(str(value), wire.DNS_PORT)
        return values


@dataclass
class ZoneCache:
    """A zone's answers as read or written at one SOA serial."""

    serial: int
    answers: dict[tuple[str, str], tuple[Answer, ...]] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.since


class Rfc2136Provider(Provider):
    """Services as RRsets in zones of an RFC 2136 primary, updated atomically per zone."""

    TYPE = "rfc2136"
    KIND = "dns"
    SUPPORTS_WEIGHTS = False
    Config = Rfc2136Config

    def __init__(self, name: str, config: Rfc2136Config, client: wire.DnsClient) -> None:
        super().__init__(name, config)
        self.client = client
        self.server = wire.Endpoint.parse(config.server)
        self.verify = [wire.Endpoint.parse(v) for v in config.verify] or [self.server]
        self._cache: dict[str, ZoneCache] = {}
        # Which services each change wrote and what we last wrote for each, for confirm().
        self._written: dict[str, tuple[ServiceConfig, ...]] = {}
        self._latest: dict[str, Answer] = {}

    @classmethod
    def create(cls, name: str, config: Any) -> Rfc2136Provider:
        """Build the provider with its TSIG key; the secret is read here, never logged."""
        return cls(name, config, wire.DnsClient(config.timeout, wire.tsig_key(name, config.tsig)))

    def bound_calls(self, seconds: float) -> None:
        # dnspython's timeout bounds the whole TCP exchange: an UPDATE fits in it.
        self.client.timeout = min(self.client.timeout, seconds)

    @classmethod
    def validate_service(cls, service: ServiceConfig, config: Any) -> list[tuple[str, str]]:
        """An UPDATE names its zone, and a zone apex holds SOA and NS, so never a CNAME."""
        if service.zone is None or service.record is None:
            return []  # the core reports missing keys
        if service.type == "CNAME" and wire.dns_name(service.record) == wire.dns_name(service.zone):
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

    async def _read_rrset(
        self, endpoint: wire.Endpoint, service: ServiceConfig
    ) -> tuple[Answer, ...]:
        query = dns.message.make_query(str(service.record), str(service.type))
        query.flags &= ~dns.flags.RD
        response = await self._ask(query, endpoint, str(service.zone), "query")
        rrset = wire.find(response, service.record, service.type)
        if rrset is None:
            _check_cname(response, service)
            return ()
        values = frozenset(_value(r, service) for r in rrset)
        return (Answer(None, values, None, rrset.ttl),)

    async def _serial(self, endpoint: wire.Endpoint, zone: str) -> int:
        query = dns.message.make_query(zone, "SOA")
        query.flags &= ~dns.flags.RD
        response = await self._ask(query, endpoint, zone, "soa")
        rrset = wire.find(response, zone, "SOA")
        if rrset is None:
            raise PermanentProviderError(
                f"rfc2136 soa server={endpoint} zone={zone}: no SOA, the zone is not served there",
                kind="NOTAUTH",
            )
        return int(rrset[0].serial)

    async def _ask(
        self, query: dns.message.Message, endpoint: wire.Endpoint, zone: str, what: str
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
        self, rcode: dns.rcode.Rcode, endpoint: wire.Endpoint, zone: str, what: str
    ) -> PermanentProviderError:
        name = dns.rcode.to_text(rcode)
        hint = wire.HINTS.get(name, "the server refused the request")
        if what == "soa" and rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            # An authoritative-only server refuses a query for a zone it does not serve:
            # the likelier cause when even the SOA is refused.
            hint = f"is {zone} served by {endpoint}? If it is: {hint}"
        return PermanentProviderError(
            f"rfc2136 {what} server={endpoint} zone={zone} key={self.client.key_name}: "
            f"{name}: {hint}",
            kind=name,
        )

    # -- checking ------------------------------------------------------------------------

    async def check_live(self, services: Sequence[ServiceConfig]) -> list[str]:
        """Every zone answers and the key may update every service's RRset.

        The permission is tested with an UPDATE that cannot apply (``wire.permission_probe``);
        one per zone, then one per service of a zone that refused, to name them.
        """
        key = f"providers.{self.name}"
        try:
            await self.read(services)
            problems = []
        except Exception as exc:  # reported, not raised: this is a diagnostic
            problems = [self._unreachable(exc) or f"{key}: {exc}"]
        by_zone: dict[str, list[ServiceConfig]] = defaultdict(list)
        for service in services:
            by_zone[_zone(service)].append(service)
        try:
            for zone, members in by_zone.items() if not problems else ():
                if await self._may_update(zone, members):
                    continue
                for s in members:
                    if not await self._may_update(zone, [s]):
                        problems.append(
                            f"{key}: service {s.name}: the key {self.client.key_name} may not "
                            f"update {s.record} {s.type} (REFUSED): see the zone's update-policy"
                        )
        except Exception as exc:  # reported, not raised: this is a diagnostic
            problems.append(f"{key}: {exc}")
        return problems

    def _unreachable(self, exc: Exception) -> str | None:
        """The problem line for a server that refused the connection or never answered."""
        cause = exc.__cause__
        if not isinstance(cause, OSError | dns.exception.Timeout):
            return None
        return (
            f"providers.{self.name}.server: no DNS server answers at {self.server} ({exc}): "
            "does the server listen on that address and port?"
        )

    async def _may_update(self, zone: str, services: Sequence[ServiceConfig]) -> bool:
        records = [(str(s.record), str(s.type), s.ttl or 0, s.sites[0].targets) for s in services]
        message = wire.permission_probe(zone, records)
        response = await self.client.exchange(message, self.server, f"permission zone={zone}")
        rcode = response.rcode()
        if rcode in CONFLICT_RCODES:
            return True
        if rcode == dns.rcode.REFUSED:
            return False
        raise self._refused(rcode, self.server, zone, "permission")

    # -- applying ------------------------------------------------------------------------

    def refuse_change(self, change: Change) -> str | None:
        """Deleting or emptying an RRset would send the name's traffic nowhere."""
        if change.after is None or not change.after.targets:
            return (
                f"service {change.service.name}: refusing to delete or empty its RRset "
                f"{change.service.record} {change.service.type}"
            )
        return None

    async def _apply(self, plan: Plan) -> Receipt:
        """One UPDATE per zone (split only past the message size), each change guarded by a
        prerequisite on the RRset it replaces; a conflict is re-read and applied on the new
        basis. Change ids are the zones' new SOA serials, ``zone@serial``. Messages are built
        and signed afresh on every call, so a retry never resends a signed message.
        """
        by_zone: dict[str, list[Change]] = defaultdict(list)
        for change in plan.changes:
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
            for batch in wire.batches(zone, pending):
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
        if cache is None or (cache.serial + sent) % wire.SERIAL_SPACE != serial:
            return
        cache.serial = serial
        cache.answers.update((_rrset_key(c.service), (c.after,)) for c in landed if c.after)
        self._cache[zone] = cache

    async def _submit(self, zone: str, changes: Sequence[Change]) -> bool:
        """Send one UPDATE; False when a prerequisite failed (then nothing was changed)."""
        message = wire.update_message(zone, changes)
        what = f"update zone={zone}"
        response = await self.client.exchange(
            message, self.server, what, guard=functools.partial(self.may_write, what)
        )
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
        self, endpoint: wire.Endpoint, zone: str, serial: int, services: Sequence[ServiceConfig]
    ) -> bool:
        have = await self._serial(endpoint, zone)
        if not wire.serial_reached(have, serial):
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


# -- helpers -------------------------------------------------------------------------------


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
    return wire.dns_name(str(service.zone)).to_text()


def _rrset_key(service: ServiceConfig) -> tuple[str, str]:
    return (wire.dns_name(str(service.record)).to_text().lower(), str(service.type))


def _check_cname(response: dns.message.Message, service: ServiceConfig) -> None:
    if service.type != "CNAME" and wire.find(response, service.record, "CNAME") is not None:
        raise PermanentProviderError(
            f"rfc2136 service {service.name}: {service.record} holds a CNAME that "
            f"trafficflip did not write; it will not replace it with {service.type} records",
            kind="CNAME",
        )


def _value(rdata: Any, service: ServiceConfig) -> str:
    # Names compare case-insensitively in DNS; the config writes them in lower case.
    text = str(rdata.to_text())
    return text.lower() if service.type == "CNAME" else text


def _show(answer: Answer | None) -> str:
    return ",".join(sorted(answer.targets)) if answer else "(none)"
