"""Start-up objects are frozen out of the garbage collector's walks; later ones are not."""

from __future__ import annotations

import gc

from trafficflip.runtime.memory import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_objects_from_start_up_are_frozen_and_later_ones_are_collected() -> None:
    kept = [Node() for _ in range(1000)]
    try:
        frozen = freeze_startup_objects()
        assert frozen >= 1000  # everything alive, the test's nodes among them
        walked = gc.get_objects()  # what a full collection walks
        assert not any(o is kept[0] for o in walked)
        later = Node()
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
