"""The etcd client's cost per operation against a real etcd (Debian's, on loopback).

Starts a throwaway member (single, or three with ``--members 3``) in a temporary folder,
stopped by PID, and times the operations the cluster uses through
``trafficflip.cluster.etcd`` (etcd's JSON gateway over httpx):

- put; the fenced leader write (a txn comparing the leader key's create_revision, one put);
- lease keepalive (the election's refresh, every third of the TTL);
- a verdict publish of 100 changed checks (one txn of 100 puts);
- reading every verdict of 10 members x 1,000 checks (one prefix range), and reading only
  what changed since a revision (``min_mod_revision``), as the node does between full reads.

    python bench/etcd_client.py [--ops 500] [--members 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.etcd import EtcdCluster  # noqa: E402
from trafficflip.cluster.etcd import Compare, EtcdClient, put_op  # noqa: E402


def timed(what: str, ops: int, call: Callable[[int], object]) -> None:
    samples = []
    cpu_start = time.process_time()
    for n in range(ops):
        started = time.perf_counter()
        call(n)
        samples.append(time.perf_counter() - started)
    cpu = (time.process_time() - cpu_start) / ops
    samples.sort()
    print(
        f"{what:<34} median {statistics.median(samples) * 1000:6.2f} ms  "
        f"p99 {samples[int(len(samples) * 0.99) - 1] * 1000:6.2f} ms  "
        f"client CPU {cpu * 1000:5.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--members", type=int, default=1)
    args = parser.parse_args()
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    print(version.splitlines()[0] if version else "etcd: unknown version")
    with tempfile.TemporaryDirectory() as root:
        cluster = EtcdCluster(Path(root), size=args.members)
        client = EtcdClient(cluster.endpoints)
        try:
            run(client, args.ops)
        finally:
            client.close()
            cluster.stop()


def run(client: EtcdClient, ops: int) -> None:
    lease = client.grant(10)
    revision = client.put("/bench/leader", b"me", lease=lease)
    fence = Compare("/bench/leader", "CREATE", revision)
    value = b'{"members": ["primary"], "shares": {"primary": 100, "dr": 0}}'
    timed("put", ops, lambda n: client.put(f"/bench/k{n % 50}", value))
    timed(
        "fenced txn (compare + put)",
        ops,
        lambda n: client.txn([fence], [put_op("/bench/services/www", value)]),
    )
    timed("lease keepalive", ops, lambda n: client.keepalive(lease))
    verdict = b'{"status": "down", "since": 1764223000.1, "reason": "status 503 x3"}'
    batch = [put_op(f"/bench/verdicts/edge-a/{c:016x}", verdict, lease) for c in range(100)]
    timed("publish 100 verdicts (one txn)", max(1, ops // 10), lambda n: client.txn([], batch))
    for member in range(10):
        rows = [put_op(f"/bench/all/m{member}/{c:016x}", verdict) for c in range(1000)]
        for start in range(0, len(rows), 128):
            client.txn([], rows[start : start + 128])
    timed(
        "read 10 x 1,000 verdicts (range)",
        max(1, ops // 50),
        lambda n: client.range("/bench/all/", prefix=True),
    )
    _, revision = client.changes("/bench/all/", 0)

    def changed_since(n: int) -> None:
        client.put(f"/bench/all/m{n % 10}/{n % 1000:016x}", verdict)
        client.changes("/bench/all/", revision)

    timed("1 put + read changes of 10,000", max(1, ops // 10), changed_since)


if __name__ == "__main__":
    main()
