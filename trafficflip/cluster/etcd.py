"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), on the project's httpx.

Only what the cluster needs: put, range with revisions, txn with compares, delete, and lease
grant/keepalive/revoke. Keys and values are base64 in the gateway's JSON (protobuf ``bytes``);
64-bit integers arrive as strings and fields equal to their zero value are left out.

Synchronous on purpose: the ``StateStore`` contract is synchronous, and the election loop
calls it from a worker thread. One ``httpx.Client`` for the process (a client per request
leaks sockets). Every request has an explicit timeout; a member that does not answer is
skipped for the next one in ``endpoints``, so one etcd member down changes nothing.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from trafficflip.errors import TrafficflipError

# etcd answers a proposal it cannot commit (quorum lost) after its own 5 s+ timeout; we give
# up sooner so a follower notices and the status says why.
REQUEST_TIMEOUT = 2.0
CONNECT_TIMEOUT = 0.5


class EtcdError(TrafficflipError):
    """etcd could not be reached or refused the request (no quorum, a member down)."""


class EtcdUnavailable(EtcdError):
    """No member answered in time: etcd is down, partitioned or without quorum."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """A txn guard: ``target`` of ``key`` ``result`` ``value`` (etcd's Compare message)."""

    key: str
    target: Literal["CREATE", "MOD", "VALUE", "VERSION", "LEASE"]
    value: int | bytes
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"] = "EQUAL"

    def to_json(self) -> dict[str, Any]:
        field = {
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VALUE": "value",
            "VERSION": "version",
            "LEASE": "lease",
        }[self.target]
        raw = self.value
        value = _b64(raw) if isinstance(raw, bytes) else str(raw)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: value}


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # The key-values of every range request in the branch that ran, in order.
    ranges: tuple[tuple[KeyValue, ...], ...]


def put_op(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: str, *, prefix: bool = False, end: str | None = None) -> dict[str, Any]:
    body = {"key": _b64(key)}
    if prefix or end is not None:
        body["range_end"] = _b64(end) if end is not None else _b64(prefix_end(key))
    return {"request_delete_range": body}


def range_op(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


class EtcdClient:
    """Talks to the first member of ``endpoints`` that answers; sticks to it until it fails."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = REQUEST_TIMEOUT,
        auth: tuple[str, str] | None = None,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._auth = auth
        self._token: str | None = None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT), verify=verify, cert=cert
        )

    # -- kv ----------------------------------------------------------------------------------

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Store ``value`` at ``key``; return the revision it was written at."""
        body = put_op(key, value, lease)["request_put"]
        return _int(self.call("/v3/kv/put", body)["header"].get("revision"))

    def get(self, key: str) -> KeyValue | None:
        kvs = self.range(key)
        return kvs[0] if kvs else None

    def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        limit: int = 0,
        keys_only: bool = False,
        descending: bool = False,
    ) -> list[KeyValue]:
        """Key-values at ``key`` (or under it with ``prefix``), sorted by key."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        if descending:
            body["sort_order"], body["sort_target"] = "DESCEND", "KEY"
        return [_kv(raw) for raw in self.call("/v3/kv/range", body).get("kvs", ())]

    def changes(self, prefix: str, after: int, *, page: int = 0) -> tuple[list[KeyValue], int]:
        """Key-values under ``prefix`` modified after revision ``after`` (all with 0), and the
        revision they were read at: pass it back as ``after`` next time. Deletions are not
        seen; the caller learns of them otherwise (a member's heartbeat key is gone).

        With ``page``, read at most that many keys per request, every page at the first
        one's revision (one consistent read): each request stays short of the timeout."""
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if after:
            body["min_mod_revision"] = str(after + 1)
        if page:
            body["limit"] = str(page)
        kvs: list[KeyValue] = []
        revision = 0
        while True:
            answer = self.call("/v3/kv/range", body)
            kvs += [_kv(raw) for raw in answer.get("kvs", ())]
            revision = revision or _int(answer["header"].get("revision"))
            if not page or not answer.get("more"):
                return kvs, revision
            body["revision"] = str(revision)
            body["key"] = _b64(kvs[-1].key + "\0")

    def count(self, prefix: str) -> int:
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "count_only": True}
        return _int(self.call("/v3/kv/range", body).get("count"))

    def delete(self, key: str, *, prefix: bool = False, end: str | None = None) -> int:
        body = delete_op(key, prefix=prefix, end=end)["request_delete_range"]
        return _int(self.call("/v3/kv/deleterange", body).get("deleted"))

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> TxnResult:
        """Run ``success`` if every compare holds, else ``failure``, atomically."""
        body = {
            "compare": [c.to_json() for c in compare],
            "success": list(success),
            "failure": list(failure),
        }
        answer = self.call("/v3/kv/txn", body)
        ranges = tuple(
            tuple(_kv(raw) for raw in r["response_range"].get("kvs", ()))
            for r in answer.get("responses", ())
            if "response_range" in r
        )
        return TxnResult(
            bool(answer.get("succeeded", False)), _int(answer["header"].get("revision")), ranges
        )

    # -- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        return _int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; return its remaining TTL, 0 when it has expired."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return _int(answer.get("result", {}).get("TTL"))

    def revoke(self, lease: int) -> None:
        """End ``lease`` now, deleting its keys (a clean shutdown hands over at once)."""
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    # -- transport ---------------------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the first member that answers; translate failures to EtcdError."""
        last: Exception | None = None
        with self._lock:
            start = self._current
        for offset in range(len(self.endpoints)):
            index = (start + offset) % len(self.endpoints)
            try:
                answer = self._post(self.endpoints[index], path, body)
            except httpx.TransportError as exc:
                last = exc
                continue
            with self._lock:
                self._current = index
            return answer
        raise EtcdUnavailable(f"no etcd member answered {path}: {last}") from last

    def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": self._token} if self._token else {}
        response = self._http.post(endpoint + path, json=body, headers=headers)
        if response.status_code == 401 and self._auth is not None:
            self._authenticate(endpoint)
            headers = {"Authorization": self._token or ""}
            response = self._http.post(endpoint + path, json=body, headers=headers)
        try:
            answer: dict[str, Any] = response.json()
        except ValueError as exc:
            raise EtcdError(f"etcd {path}: HTTP {response.status_code}") from exc
        if "error" in answer or response.status_code != 200:
            message = answer.get("message") or answer.get("error") or response.status_code
            if _is_unavailable(str(message)):
                # A member without a leader or quorum: another member may still have one.
                raise httpx.TransportError(f"etcd {path}: {message}")
            raise EtcdError(f"etcd {path}: {message}")
        return answer

    def _authenticate(self, endpoint: str) -> None:
        assert self._auth is not None
        name, password = self._auth
        response = self._http.post(
            endpoint + "/v3/auth/authenticate", json={"name": name, "password": password}
        )
        if response.status_code != 200:
            raise EtcdError(f"etcd authentication refused for user {name!r}")
        self._token = str(response.json().get("token", ""))

    def close(self) -> None:
        self._http.close()


def _is_unavailable(message: str) -> bool:
    return any(
        text in message
        for text in ("request timed out", "no leader", "leader changed", "too many requests")
    )


def prefix_end(key: str) -> str:
    """The range end that selects every key starting with ``key`` (etcd's ``WithPrefix``).

    Keys here are ASCII and end in a printable character, so bumping the last one is enough.
    """
    return key[:-1] + chr(ord(key[-1]) + 1)


def _b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=_int(raw.get("create_revision")),
        mod_revision=_int(raw.get("mod_revision")),
        lease=_int(raw.get("lease")),
    )


def _int(value: Any) -> int:
    return int(value) if value is not None else 0
