"""Route53: each site is a weighted record set (``SetIdentifier`` = site, ``Weight`` = share %).

Credentials and the endpoint come from the standard AWS chain (``AWS_ENDPOINT_URL_ROUTE_53``
points it at a local emulation).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from trafficflip.backend.budget import CallBudget
from trafficflip.backend.provider import Provider, Receipt
from trafficflip.config.durations import Duration
from trafficflip.config.schema import ServiceConfig
from trafficflip.decision.model import Answer
from trafficflip.decision.plan import Change, Plan
from trafficflip.errors import PermanentProviderError, ProviderError

from . import _aws as aws

log = logging.getLogger("trafficflip.providers.route53")
T = TypeVar("T")

# Route53's documented limits for one ChangeResourceRecordSets request: 1,000 ResourceRecord
# elements and 32,000 characters of Value, each counted twice in an UPSERT.
MAX_RECORDS_PER_BATCH = 1000
MAX_VALUE_CHARS_PER_BATCH = 32000
# Route53 rejects a second change to a zone while one is pending: wait and send it again.
TRANSIENT_CODES = aws.THROTTLING_CODES | {"PriorRequestNotComplete"}
# Reading a whole zone costs one call per 300 record sets; a few services read their names.
FULL_ZONE_READ_ABOVE = 2


class Route53Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["route53"]
    hosted_zone_id: str | None = None
    region: str = "us-east-1"
    timeout: Duration = 10.0
    # Route53 throttles the whole account; its long-standing documented rate is 5 requests a
    # second (reads count too). Lower it when other tools share the account.
    max_calls_per_second: Annotated[float, Field(gt=0)] = 5.0


RecordKey = tuple[str, str]  # (name, type), name lower-case and fully qualified


class Route53Provider(Provider):
    """Weighted record sets in one or more hosted zones."""

    TYPE = "route53"
    KIND = "dns"
    SUPPORTS_WEIGHTS = True
    MAX_WEIGHT = 255
    # Reads count against the account's 5 calls/s like writes, and a zone of 1,000 records
    # takes 4 of them: a failover is written from what was last read or written (UPSERTs
    # carry the whole record set, so a stale view cannot write a wrong answer), and writes
    # start at most once a second so an outage's failovers share a few calls
    # (docs/performance.md, Mass failover).
    PLAN_URGENT_FROM_KNOWN = True
    WRITE_SPACING = 1.0
    # A failed failover is tried again at the account's rate (5 calls/s), jittered; the
    # budget holds the calls to it, and PriorRequestNotComplete clears once the change
    # before it is INSYNC, which takes seconds (docs/providers/route53.md).
    URGENT_RETRY_SPACING = 0.2
    Config = Route53Config

    def __init__(self, name: str, config: Route53Config, client: Any) -> None:
        super().__init__(name, config)
        self.client = client
        self.timeout = config.timeout
        # Rebuilds the client with a shorter timeout (cluster mode); None for a client
        # handed in (tests), whose timeouts are its maker's.
        self.make_client: Callable[[float], Any] | None = None
        self.budget = CallBudget(config.max_calls_per_second)
        self._zone_ids: dict[str, str] = {}
        # The raw record sets of the last read: a DELETE must repeat a record set exactly.
        self._raw: dict[tuple[str, str | None], dict[str, Any]] = {}

    @classmethod
    def create(cls, name: str, config: Any) -> Route53Provider:
        provider = cls(name, config, aws.client("route53", config.region, config.timeout))
        provider.make_client = functools.partial(aws.client, "route53", config.region)
        return provider

    def bound_calls(self, seconds: float) -> None:
        timeout = aws.bounded_timeout(self.config.timeout, seconds)
        if timeout < self.timeout and self.make_client is not None:
            self.client, self.timeout = self.make_client(timeout), timeout

    async def _call(
        self, what: str, fn: Callable[..., T], *, write: bool = False, **kwargs: Any
    ) -> T:
        """The one edge to Route53: every call goes through ``aws.call``, and a ``write``
        asks the provider's authority first, with the call's own timeout."""
        label = f"route53 {what}"
        guard = (lambda: self.may_write(label, aws.call_time(self.timeout))) if write else None
        result: T = await aws.call(label, self.budget, fn, TRANSIENT_CODES, guard=guard, **kwargs)
        return result

    async def zone_id(self, zone: str) -> str:
        """The hosted zone id for ``zone``: configured, or looked up once and cached."""
        if self.config.hosted_zone_id:
            return str(self.config.hosted_zone_id).removeprefix("/hostedzone/")
        zone = zone.lower()
        if zone not in self._zone_ids:
            reply = await self._call(
                "ListHostedZonesByName",
                self.client.list_hosted_zones_by_name,
                DNSName=zone,
                MaxItems="10",
            )
            ids = [z["Id"] for z in reply["HostedZones"] if z["Name"].lower() == zone]
            if len(ids) != 1:
                found = "no hosted zone" if not ids else f"{len(ids)} hosted zones"
                raise PermanentProviderError(
                    f"route53: {found} named {zone}; set providers.{self.name}.hosted_zone_id",
                    kind="NoSuchHostedZone",
                )
            self._zone_ids[zone] = ids[0].removeprefix("/hostedzone/")
        return self._zone_ids[zone]

    async def read(self, services: Sequence[ServiceConfig]) -> Mapping[str, tuple[Answer, ...]]:
        by_zone: dict[str, list[ServiceConfig]] = defaultdict(list)
        for service in services:
            by_zone[str(service.zone)].append(service)
        answers: dict[str, tuple[Answer, ...]] = {}
        for zone, members in by_zone.items():
            zone_id = await self.zone_id(zone)
            record_sets = await self._read_zone(zone_id, members)
            for service in members:
                answers[service.name] = self._answers(service, record_sets)
        return answers

    async def _read_zone(
        self, zone_id: str, services: Sequence[ServiceConfig]
    ) -> dict[RecordKey, list[dict[str, Any]]]:
        wanted = {_key(s) for s in services}
        starts: list[RecordKey | None] = [None]
        if len(services) <= FULL_ZONE_READ_ABOVE:
            starts = list(sorted(wanted))
        found: dict[RecordKey, list[dict[str, Any]]] = defaultdict(list)
        for start in starts:
            await self._list_from(zone_id, start, wanted, found)
        return found

    async def _list_from(
        self,
        zone_id: str,
        start: RecordKey | None,
        wanted: set[RecordKey],
        found: dict[RecordKey, list[dict[str, Any]]],
    ) -> None:
        params: dict[str, Any] = {"HostedZoneId": zone_id, "MaxItems": "300"}
        if start is not None:
            params.update(StartRecordName=start[0], StartRecordType=start[1])
        while True:
            page = await self._call(
                "ListResourceRecordSets", self.client.list_resource_record_sets, **params
            )
            for record_set in page["ResourceRecordSets"]:
                key = (_fqdn(record_set["Name"]), record_set["Type"])
                if key in wanted:
                    found[key].append(record_set)
            next_key = (_fqdn(page.get("NextRecordName", "")), page.get("NextRecordType", ""))
            # A targeted read stops once the listing has moved past the name it wanted.
            if not page.get("IsTruncated") or (start is not None and next_key != start):
                return
            params.update(
                StartRecordName=page["NextRecordName"], StartRecordType=page["NextRecordType"]
            )
            if "NextRecordIdentifier" in page:
                params["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    def _answers(
        self, service: ServiceConfig, record_sets: Mapping[RecordKey, list[dict[str, Any]]]
    ) -> tuple[Answer, ...]:
        answers = []
        for record_set in record_sets.get(_key(service), []):
            weighted = "Weight" in record_set and "SetIdentifier" in record_set
            site = record_set["SetIdentifier"] if weighted else None
            self._raw[(service.name, site)] = record_set
            values = frozenset(
                _value(r["Value"], service) for r in record_set.get("ResourceRecords", [])
            )
            weight = int(record_set["Weight"]) if weighted else None
            answers.append(Answer(site, values, weight, record_set.get("TTL")))
        return tuple(answers)

    async def _apply(self, plan: Plan) -> Receipt:
        by_zone: dict[str, list[Change]] = defaultdict(list)
        for change in plan.changes:
            by_zone[await self.zone_id(str(change.service.zone))].append(change)
        owners = {_fqdn(str(c.service.record)): c.service.name for c in plan.changes}
        batches = [
            (zone_id, batch)
            for zone_id, changes in by_zone.items()
            for batch in _batches([self._change(c, plan.read_first) for c in changes])
        ]
        change_ids: list[str] = []
        in_sync = True
        for index, (zone_id, batch) in enumerate(batches):
            try:
                infos = await self._submit(zone_id, batch, owners)
            except ProviderError as exc:
                if exc.services is None:
                    # The batches before this one were applied: only this one (which may or
                    # may not have been, after a timeout) and those not sent are to retry.
                    exc.services = frozenset(
                        owners[_fqdn(c["ResourceRecordSet"]["Name"])]
                        for _, unsent in batches[index:]
                        for c in unsent
                    )
                raise
            for info in infos:
                change_ids.append(info["Id"])
                in_sync = in_sync and info["Status"] == "INSYNC"
        return Receipt(self.name, tuple(change_ids), time.time(), in_sync)

    async def _submit(
        self, zone_id: str, batch: list[dict[str, Any]], owners: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Send one batch; the ChangeInfo of each call it took (more than one only when
        Route53 refused it)."""
        try:
            reply = await self._call(
                "ChangeResourceRecordSets",
                self.client.change_resource_record_sets,
                write=True,
                HostedZoneId=zone_id,
                ChangeBatch={"Changes": batch},
            )
        except PermanentProviderError as exc:
            if any(c["Action"] == "CREATE" for c in batch):
                # Most likely a record set created since the read, by another writer: the
                # same answers as UPSERTs write over it. Any other fault fails again below.
                log.warning("create_refused zone=%s: %s; writing as UPSERT", zone_id, exc)
                upserts = [
                    {**c, "Action": "UPSERT"} if c["Action"] == "CREATE" else c for c in batch
                ]
                infos = []
                for again in _batches(upserts):
                    infos.extend(await self._submit(zone_id, again, owners))
                return infos
            names = {c["ResourceRecordSet"]["Name"] for c in batch}
            if len(names) == 1:
                exc.services = frozenset(owners.get(_fqdn(n), n) for n in names)
                raise
            # One bad record must not block every other flip in the zone: retry per name.
            log.warning("batch_rejected zone=%s names=%d splitting", zone_id, len(names))
            return await self._submit_per_name(zone_id, batch, owners)
        info: dict[str, Any] = reply["ChangeInfo"]
        return [info]

    async def _submit_per_name(
        self, zone_id: str, batch: list[dict[str, Any]], owners: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        per_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for change in batch:
            per_name[change["ResourceRecordSet"]["Name"]].append(change)
        errors: list[PermanentProviderError] = []
        infos: list[dict[str, Any]] = []
        for changes in per_name.values():
            try:
                infos.extend(await self._submit(zone_id, changes, owners))
            except PermanentProviderError as exc:
                errors.append(exc)
        if errors:
            failed = frozenset(s for e in errors for s in e.services or ())
            text = "; ".join(str(e) for e in errors)
            raise PermanentProviderError(text, kind=errors[0].kind, services=failed)
        return infos

    def _change(self, change: Change, read_first: bool) -> dict[str, Any]:
        service = change.service
        if change.action == "delete":
            raw = self._raw[(service.name, change.before.site if change.before else None)]
            return {"Action": "DELETE", "ResourceRecordSet": raw}
        after = change.after
        assert after is not None and after.site is not None
        record_set = {
            "Name": service.record,
            "Type": service.type,
            "SetIdentifier": after.site,
            "Weight": after.weight or 0,
            "TTL": after.ttl,
            "ResourceRecords": [{"Value": v} for v in sorted(after.targets)],
        }
        if change.action == "create" and read_first:
            # A record set the read just found absent: CREATE counts once against the
            # 1,000 records of a call where UPSERT counts twice, so a first deployment of
            # 2,000 services takes 4 calls, not 8. Should another writer have created it
            # since, the call fails, and the retry reads again and updates it.
            return {"Action": "CREATE", "ResourceRecordSet": record_set}
        # UPSERT keeps the call idempotent: re-sending after a lost reply changes nothing.
        return {"Action": "UPSERT", "ResourceRecordSet": record_set}

    async def confirm(self, receipt: Receipt) -> bool:
        for change_id in receipt.change_ids:
            reply = await self._call("GetChange", self.client.get_change, Id=change_id)
            if reply["ChangeInfo"]["Status"] != "INSYNC":
                return False
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def _key(service: ServiceConfig) -> RecordKey:
    return (_fqdn(str(service.record)), str(service.type))


def _value(value: str, service: ServiceConfig) -> str:
    return _fqdn(value) if service.type == "CNAME" else value


def _batches(changes: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split at Route53's per-request limits, keeping a name's changes together (a takeover's
    DELETE and UPSERT must land in the same batch)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        groups[change["ResourceRecordSet"]["Name"]].append(change)
    batches: list[list[dict[str, Any]]] = [[]]
    records = chars = 0
    for group in groups.values():
        more_records = sum(_records(c) for c in group)
        more_chars = sum(_chars(c) for c in group)
        full = records + more_records > MAX_RECORDS_PER_BATCH
        if batches[-1] and (full or chars + more_chars > MAX_VALUE_CHARS_PER_BATCH):
            batches.append([])
            records = chars = 0
        batches[-1].extend(group)
        records, chars = records + more_records, chars + more_chars
    return [b for b in batches if b]


def _factor(change: dict[str, Any]) -> int:
    # Route53 counts an UPSERT's records and characters twice.
    return 2 if change["Action"] == "UPSERT" else 1


def _records(change: dict[str, Any]) -> int:
    return _factor(change) * len(change["ResourceRecordSet"].get("ResourceRecords", []))


def _chars(change: dict[str, Any]) -> int:
    values = change["ResourceRecordSet"].get("ResourceRecords", [])
    return _factor(change) * sum(len(r["Value"]) for r in values)
