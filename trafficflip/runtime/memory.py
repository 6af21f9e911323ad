"""Short garbage-collector pauses for a service that must probe on time.

The configuration, the engine, the providers' clients and the imported modules live as long
as the process: hundreds of thousands of objects at 500 services. Each full collection of
CPython's cyclic garbage collector walks all of them, and no probe runs meanwhile: 185 to
250 ms per full collection with 500 services and 1,000 checks, every few seconds, which put
the p99 gap between two probes of one check at 1.2 s instead of 1.03 s
(``bench/probe_service.py``, docs/performance.md). Frozen once start-up has built them, they
are left out of every later collection (``gc.freeze``, which CPython documents for exactly
this), and a full collection takes 60 to 80 ms.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect what start-up left behind, then exempt every live object from future
    collections. Returns how many objects were frozen. Objects made later (a reload's new
    configuration, snapshots, journals) are collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
