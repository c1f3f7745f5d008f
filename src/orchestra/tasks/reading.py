"""Reading one task, and waiting for its end: answered as soon as this process hears of it.

A task ends where it runs: in a supervisor this process watches (the watcher wakes its
waiters), on a worker whose end a listener hears, or somewhere nobody tells this process of,
where a waiter looks again every ``POLL_SLICE``. A task nobody is moving along (a supervisor
gone unnoticed, a queue without a server) is moved along by whoever reads it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestra.errors import NotFound, is_disk_full
from orchestra.limits import MAX_WAIT
from orchestra.records import TaskInfo
from orchestra.tasks import queries
from orchestra.tasks.status import TaskStatus

if TYPE_CHECKING:
    from orchestra.storage.db import Database
    from orchestra.tasks.lifecycle import TaskRecord
    from orchestra.tasks.waiting import Waiters
    from orchestra.tasks.watching import Watcher

_LOGGER = logging.getLogger(__name__)
POLL_SLICE = 0.05  # seconds between looks at a task that another process supervises


class TaskReader:
    """One task's record, at once or once it has ended."""

    def __init__(
        self,
        db: Database,
        waiters: Waiters,
        watcher: Watcher,
        dispatch: Callable[[], int],
        starts_here: bool,
    ) -> None:
        self.db = db
        self.waiters = waiters
        self.watcher = watcher
        self._dispatch = dispatch  # starts what the queue allows, where tasks run here
        self._starts_here = starts_here
        self.listening = False  # a listener wakes this process when a worker ends a task

    def get(self, task_id: int, *, wait: float = 0.0) -> TaskInfo:
        """One task; with ``wait``, answer once it is final or up to ``wait`` (max 60) s."""
        if wait > 0:
            row = self.wait_final(queries.check_id(task_id), min(wait, MAX_WAIT))
        else:
            row = queries.row(self.db, task_id)
            if not TaskStatus(row.status).is_final and self._check_elsewhere_tolerant(row):
                row = queries.row(self.db, task_id)
        found = queries.info(row)
        if found.start is None and found.status == TaskStatus.RUNNING:
            # written at its end; until then the server that launched it knows
            return dataclasses.replace(found, start=self.watcher.started_as(task_id))
        return found

    def hears_end(self, task_id: int, status: str) -> bool:
        """Whether this process will be woken when the task ends (else someone must look)."""
        return self.listening or self._watched(task_id, status)

    def will_hear(self, task_id: int) -> bool:
        """Whether ``task_id`` is a task this process queued and will be woken at its end."""
        return self.waiters.expected(task_id) and self.hears_end(task_id, TaskStatus.QUEUED)

    def _watched(self, task_id: int, status: str) -> bool:
        """Whether this process settles the task: it supervises it, or will start it."""
        return self.watcher.is_watched(task_id) or (
            self.watcher.serving and status == TaskStatus.QUEUED and self._starts_here
        )

    def wait_final(self, task_id: int, timeout: float) -> TaskRecord:
        """The task's row once final, or when ``timeout`` seconds have passed."""
        final = self.waiters.final(task_id)
        if final is not None:
            return final  # ended moments ago: its waiters need no read each
        deadline = time.monotonic() + timeout
        while True:
            event = self.waiters.event(task_id)  # before the read: a settle cannot slip between
            try:
                row = queries.row(self.db, task_id)
            except NotFound:
                self.waiters.wake(task_id)
                raise
            remaining = deadline - time.monotonic()
            if TaskStatus(row.status).is_final:
                self.waiters.wake(task_id)  # nothing will set it now: drop it
                return row
            if remaining <= 0:
                return row
            if self._check_elsewhere(row):
                continue
            watched = self._watched(task_id, row.status)
            woken = event.wait(min(remaining, 1.0 if watched else POLL_SLICE))
            if woken and event.final is not None:
                return event.final  # as the finishing transaction wrote it: no second read

    def _check_elsewhere(self, row: TaskRecord) -> bool:
        """Move a task along that no thread of this process is watching; True if it moved."""
        if row.status == TaskStatus.RUNNING:
            return self.watcher.settle_unwatched(row)
        if row.status == TaskStatus.QUEUED and not self.watcher.serving:
            self._dispatch()  # no server: whoever waits starts what the queue allows
        return False

    def _check_elsewhere_tolerant(self, row: TaskRecord) -> bool:
        """``_check_elsewhere`` for a read: a full disk leaves the row as it is, not an error."""
        try:
            return self._check_elsewhere(row)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            _LOGGER.warning("task %s not settled yet: the disk is full", row.id)
            return False
