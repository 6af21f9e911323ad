"""An asyncio event loop on virtual time: when nothing is ready, time jumps to the next timer.

The engine, its provider syncs and their waits (``asyncio.sleep``, ``wait_for``, the
wake-ups of ``call_later``) run unchanged; an hour of them passes in milliseconds, and the
same schedule gives the same run every time. Nothing here may do real I/O: the selector
never waits, so a socket would never be read.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any


class _NoWaitSelector(selectors.BaseSelector):
    """A selector that only keeps registrations (the loop's self-pipe) and, asked to wait,
    moves the virtual clock forward by the wait instead."""

    def __init__(self, loop_time: list[float]) -> None:
        self._time = loop_time
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("virtual time: every task waits and no timer is due (deadlock)")
        self._time[0] += max(timeout, 0.0)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return dict(self._keys)

    def close(self) -> None:
        self._keys.clear()


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual seconds from ``start``; see the module docstring."""

    def __init__(self, start: float = 1000.0) -> None:
        self._virtual = [start]
        super().__init__(_NoWaitSelector(self._virtual))
        # Callbacks slower than this are logged by asyncio's debug mode only; keep it quiet.
        self.slow_callback_duration = 3600.0

    def time(self) -> float:
        return self._virtual[0]

    def run_to_the_end(self, main: Coroutine[Any, Any, None]) -> str | None:
        """Run ``main``; then cancel every task left and close. Returns the message of an
        ``AssertionError`` that ended it (a broken promise), else None."""
        try:
            self.run_until_complete(main)
            return None
        except AssertionError as exc:
            return str(exc)
        finally:
            tasks = asyncio.all_tasks(self)
            for task in tasks:
                task.cancel()
            self.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.close()
