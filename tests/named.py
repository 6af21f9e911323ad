"""A real BIND ``named`` on a loopback high port, with a temporary zone and a TSIG key.

``controls { };`` keeps the control channel closed, so nothing but DNS listens. The process
is stopped by its PID; a restart keeps the directory, so the journal (``.jnl``) is replayed.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from tests.support import Process, free_port, wait_until

NAMED = "/usr/sbin/named"
KEY_NAME = "trafficflip."
ZONE = "example.test."
AVAILABLE = shutil.which(NAMED) is not None and os.geteuid() == 0


def new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def zone_text(zone: str, records: Iterable[str] = ()) -> str:
    """A minimal zone: SOA, one NS with its address, then ``records`` (zone-file lines)."""
    lines = [
        f"$ORIGIN {zone}",
        "$TTL 300",
        "@ IN SOA ns hostmaster 1 3600 600 86400 60",
        "@ IN NS ns",
        "ns IN A 127.0.0.1",
        *records,
    ]
    return "\n".join(lines) + "\n"


class Named:
    """One ``named -g`` process serving ``zones`` (name -> extra zone-file lines).

    It counts as started once the first zone answers; the others may still be loading.
    """

    def __init__(
        self,
        directory: Path,
        zones: dict[str, Sequence[str]] | None = None,
        *,
        port: int = 0,
        update_policy: str | None = None,
    ) -> None:
        self.dir = directory
        # An update-policy body (``grant KEY name NAME A;``) instead of allow-update for the key.
        self.update_policy = update_policy
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.secret = new_secret()
        self.zones = zones if zones is not None else {ZONE: ()}
        self.process: Process | None = None
        self.starts = 0
        self._write()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def key(self) -> dns.tsig.Key:
        return dns.tsig.Key(KEY_NAME, self.secret, "hmac-sha256")

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for zone, records in self.zones.items():
            (self.dir / f"{zone}zone").write_text(zone_text(zone, records))
        if self.update_policy is None:
            permission = f'allow-update {{ key "{KEY_NAME}"; }};'
        else:
            permission = f"update-policy {{ {self.update_policy} }};"
        zones = "\n".join(
            f'zone "{zone}" {{ type primary; file "{self.dir}/{zone}zone"; {permission} }};'
            for zone in self.zones
        )
        (self.dir / "named.conf").write_text(
            f"""
options {{
    directory "{self.dir}";
    pid-file "{self.dir}/named.pid";
    session-keyfile "{self.dir}/session.key";
    listen-on port {self.port} {{ {self.host}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
{zones}
"""
        )

    def start(self) -> Named:
        self.starts += 1
        log = self.dir / f"named.{self.starts}.log"
        conf = str(self.dir / "named.conf")
        self.process = Process([NAMED, "-g", "-c", conf], log=log)
        wait_until(self._answers, timeout=20, what=f"named on {self.address}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _answers(self) -> bool:
        assert self.process is not None and self.process.alive(), self.output()
        try:
            response = self.query(next(iter(self.zones)), "SOA")
        except (OSError, EOFError, dns.exception.DNSException):
            return False
        # named answers SERVFAIL until the zone has loaded.
        return response.rcode() == dns.rcode.NOERROR

    def output(self) -> str:
        return self.process.output() if self.process else ""

    # -- helpers for tests: look and edit "by hand", as an operator would -------------------

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        request = dns.message.make_query(name, rdtype)
        return dns.query.tcp(request, self.host, port=self.port, timeout=2)

    def values(self, name: str, rdtype: str) -> set[str]:
        """The RRset's values as text, empty when it does not exist."""
        response = self.query(name, rdtype)
        wanted = dns.rdatatype.from_text(rdtype)
        return {
            rdata.to_text()
            for rrset in response.answer
            if rrset.name == dns.name.from_text(name) and rrset.rdtype == wanted
            for rdata in rrset
        }

    def ttl(self, name: str, rdtype: str) -> int | None:
        response = self.query(name, rdtype)
        return next((rrset.ttl for rrset in response.answer), None)

    def serial(self, zone: str = ZONE) -> int:
        response = self.query(zone, "SOA")
        return int(response.answer[0][0].serial)

    def replace(
        self, name: str, rdtype: str, values: Sequence[str], ttl: int = 60, zone: str = ZONE
    ) -> None:
        """Change an RRset behind trafficflip's back (a hand edit with nsupdate)."""
        update = dns.update.UpdateMessage(zone, keyring=self.key)
        update.replace(name, ttl, rdtype, *values)
        response = dns.query.tcp(update, self.host, port=self.port, timeout=2)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())
