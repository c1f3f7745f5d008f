"""Who waits for which task in this process, woken when it moves on."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestra.tasks.lifecycle import TaskRecord

_LOGGER = logging.getLogger(__name__)
Call = Callable[[], None]
REMEMBERED = 10_000  # ended tasks remembered, so that a wait for one needs no database read
# A task's final row, as its finishing transaction wrote it, answers the waits that come in
# this long after its end: the parked waiters of one task (dozens, released at once) then
# cost no database read each. A final row never changes; only its deletion by another
# process goes unseen for this long.
FINAL_KEPT = 5.0


class Waiting(threading.Event):
    """Set when a task moved on; carries its final row when a finish set it."""

    final: TaskRecord | None = None


class Waiters:
    """One event per awaited task, and calls to make, shared by every thread of the process."""

    def __init__(self) -> None:
        self._events: dict[int, Waiting] = {}
        self._calls: dict[int, list[Call]] = {}
        self._ended: OrderedDict[int, None] = OrderedDict()
        self._expected: OrderedDict[int, None] = OrderedDict()  # queued here, not ended yet
        self._finals: OrderedDict[int, tuple[float, TaskRecord]] = OrderedDict()
        self._lock = threading.Lock()

    def event(self, task_id: int) -> Waiting:
        """The event for ``task_id`` (made on first use)."""
        with self._lock:
            return self._events.setdefault(task_id, Waiting())

    def call_on_wake(self, task_id: int, call: Call) -> bool:
        """Make ``call()`` once, on the next wake of ``task_id`` (a waiter without a thread).

        False, and nothing kept, when the task has ended already: no wake will come.
        """
        with self._lock:
            if task_id in self._ended:
                return False
            self._calls.setdefault(task_id, []).append(call)
            return True

    def forget(self, task_id: int, call: Call) -> None:
        """Drop a ``call_on_wake`` no longer wanted."""
        with self._lock:
            calls = self._calls.get(task_id, [])
            if call in calls:
                calls.remove(call)
            if not calls:
                self._calls.pop(task_id, None)

    def expect(self, task_id: int) -> None:
        """Note a task this process has just queued: it exists, and its end is still to come."""
        with self._lock:
            self._ended.pop(task_id, None)  # an id used again (SQLite reuses a deleted one's)
            self._finals.pop(task_id, None)
            self._expected[task_id] = None
            if len(self._expected) > REMEMBERED:
                self._expected.popitem(last=False)

    def expected(self, task_id: int) -> bool:
        """Whether ``task_id`` was queued here and has not been woken since."""
        with self._lock:
            return task_id in self._expected

    def has_ended(self, task_id: int) -> bool:
        """Whether ``task_id`` was woken lately: every wake tells of a task's end."""
        with self._lock:
            return task_id in self._ended

    def final(self, task_id: int) -> TaskRecord | None:
        """The final row a wake handed over for ``task_id`` lately, if any."""
        with self._lock:
            kept = self._finals.get(task_id)
        return kept[1] if kept is not None and kept[0] > time.monotonic() else None

    def forget_final(self, task_ids: list[int]) -> None:
        """Drop what is kept of tasks deleted here."""
        with self._lock:
            for task_id in task_ids:
                self._finals.pop(task_id, None)

    def wake(self, task_id: int, final: TaskRecord | None = None) -> None:
        """Wake whoever waits for ``task_id``, handing over its final row if known."""
        with self._lock:
            if final is not None:
                self._keep_final(task_id, final)
            event = self._events.pop(task_id, None)
            calls = self._calls.pop(task_id, [])
            self._ended[task_id] = None
            self._expected.pop(task_id, None)
            if len(self._ended) > REMEMBERED:
                self._ended.popitem(last=False)
        if event is not None:
            event.final = final
            event.set()
        for call in calls:
            try:
                call()
            except Exception:  # one waiter's failure must not stop the task's settling
                _LOGGER.exception("waking a waiter of task %s failed", task_id)

    def _keep_final(self, task_id: int, final: TaskRecord) -> None:
        """Keep ``final`` for FINAL_KEPT seconds, dropping what is older (the lock held)."""
        moment = time.monotonic()
        self._finals.pop(task_id, None)
        self._finals[task_id] = (moment + FINAL_KEPT, final)
        while self._finals:
            oldest = next(iter(self._finals.values()))
            if oldest[0] > moment and len(self._finals) <= REMEMBERED:
                break
            self._finals.popitem(last=False)
