"""The promises, checked at every step of seeded fault schedules (see ``run.py``).

Each seed is a different world: services, thresholds, steps, provider behaviour, and a
schedule of site flaps, every-site-down periods, provider fault bursts, store failures,
crashes with resume from the store, reloads and operator commands. A failing seed prints
the one-line command that replays it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.simulation.cluster import simulate_cluster
from tests.simulation.run import simulate

# 300 seeds in every run; TRAFFICFLIP_SIM_SEEDS=2000 (say) searches wider.
SEEDS = int(os.environ.get("TRAFFICFLIP_SIM_SEEDS", "300"))
BATCH = 25


def failing(simulate_one: Callable[[int], list[str]], module: str, first: int, end: int) -> str:
    """The broken promises of seeds ``first`` to ``end``, each with its replay command."""
    failures = []
    for seed in range(first, end):
        violations = simulate_one(seed)
        if violations:
            failures.append(
                f"{violations[0]}\n  replay: .venv/bin/python -m tests.simulation.{module} "
                f"--seed {seed} --verbose"
            )
    return "\n".join(failures)


@pytest.mark.parametrize("first", range(0, SEEDS, BATCH))
def test_every_promise_holds_at_every_step(first: int) -> None:
    failures = failing(simulate, "run", first, min(first + BATCH, SEEDS))
    assert not failures, failures


# Cluster mode: two instances, a lease on virtual time, partitions (see ``cluster.py``).
CLUSTER_SEEDS = int(os.environ.get("TRAFFICFLIP_SIM_CLUSTER_SEEDS", "100"))


@pytest.mark.parametrize("first", range(0, CLUSTER_SEEDS, BATCH))
def test_one_writer_and_no_stale_term_through_partitions(first: int) -> None:
    failures = failing(simulate_cluster, "cluster", first, min(first + BATCH, CLUSTER_SEEDS))
    assert not failures, failures
