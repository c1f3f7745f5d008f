"""Who waits for which task in this process, woken when it moves on."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestra.tasks.lifecycle import TaskRecord


class Waiting(threading.Event):
    """Set when a task moved on; carries its final row when a finish set it."""

    final: TaskRecord | None = None


class Waiters:
    """One event per awaited task, shared by every thread of the process."""

    def __init__(self) -> None:
        self._events: dict[int, Waiting] = {}
        self._lock = threading.Lock()

    def event(self, task_id: int) -> Waiting:
        """The event for ``task_id`` (made on first use)."""
        with self._lock:
            return self._events.setdefault(task_id, Waiting())

    def wake(self, task_id: int, final: TaskRecord | None = None) -> None:
        """Wake whoever waits for ``task_id``, handing over its final row if known."""
        with self._lock:
            event = self._events.pop(task_id, None)
        if event is not None:
            event.final = final
            event.set()
