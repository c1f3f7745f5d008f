"""Dispatching on this machine: claim queued tasks under the limit, start them, record ends.

Only for an executor that runs tasks here (local). The limit (``ORCHESTRA_MAX_RUNNING``)
counts running tasks in the database, so it holds across every server sharing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchestra.errors import is_disk_full
from orchestra.storage import space
from orchestra.storage.files import TaskFolder
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import TaskRecord
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.executors.base import Handle, LocalRuns
    from orchestra.storage.db import Database
    from orchestra.tasks.waiting import Waiters

_LOGGER = logging.getLogger(__name__)
Started = Callable[[int, "Handle", "Mapping[str, Any] | None"], None]


def _nobody_watches(task_id: int, handle: Handle, spec: Mapping[str, Any] | None) -> None:
    """The default before a watcher is attached: nothing to do."""


class Dispatcher:
    """Starts claimed tasks through the executor and hands each freed slot on."""

    def __init__(
        self, settings: Settings, db: Database, executor: LocalRuns, waiters: Waiters, name: str
    ) -> None:
        self.settings = settings
        self.db = db
        self.executor = executor
        self.waiters = waiters
        self.name = name  # recorded as the worker of the tasks this process claims
        self.on_started: Started = _nobody_watches
        self._short_of_space = False

    def slots(self) -> int:
        """Tasks that may run at once now: none while the data folder is short of space."""
        if not space.low(self.settings):
            self._short_of_space = False
            return self.settings.max_running
        if not self._short_of_space:  # said once; the sweep starts them when space is back
            self._short_of_space = True
            _LOGGER.warning("less than ORCHESTRA_MIN_FREE_MB free: queued tasks wait")
        return 0

    def dispatch(self) -> int:
        """Start queued tasks, oldest first, while fewer than ``max_running`` run; how many."""
        started, limit = 0, self.slots()
        # a read first: the write lock is taken only when a claim is likely to succeed
        while lifecycle.may_claim(self.db, limit):
            row = lifecycle.claim_next(self.db, limit, self.name)
            if row is None:
                break
            self.launch(row)
            started += 1
        return started

    def launch(self, row: TaskRecord) -> bool:
        """Start a claimed task; False when it could not start (then settled)."""
        # No write after the start: the supervisor records its identity in its folder, where
        # any process finds it (settle, kill), so the row keeps no handle.
        try:
            if not row.spec:
                raise OSError("the task has no run specification")
            handle = self.executor.start(row.spec)
        except OSError as exc:
            self.finish(row.id, Outcome(TaskStatus.ERROR, None, f"could not start: {exc}"), False)
            return False
        self.on_started(row.id, handle, row.spec)
        return True

    def prepare_folder(self, task_id: int) -> None:
        """Make a queued task's folder now, so that starting it later is quicker."""
        try:
            TaskFolder(self.settings.tasks_dir, task_id).output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # its launch tries again, and reports what fails
            _LOGGER.warning("could not make the folder of task %s: %s", task_id, exc)

    def finish(self, task_id: int, outcome: Outcome, dispatch: bool) -> bool:
        """Record a task's end; with ``dispatch``, its slot goes to the oldest queued task."""
        try:
            final, claimed = self._write_finish(task_id, outcome, dispatch)
        except Exception as exc:
            # a full disk must not leave the task `running`: give up the reserve, once
            if not is_disk_full(exc) or not space.release_reserve(self.settings):
                raise
            final, claimed = self._write_finish(task_id, outcome, dispatch)
        if final is not None:  # side effects only after the commit
            # the next task first: its slot stands idle until it starts, while whoever waits
            # for this one is answered a moment later
            try:
                if claimed is not None and not self.launch(claimed):
                    self.dispatch()  # it could not start: the slot is free again
            finally:
                self.waiters.wake(task_id, final)
        return final is not None

    def _write_finish(
        self, task_id: int, outcome: Outcome, dispatch: bool
    ) -> tuple[TaskRecord | None, TaskRecord | None]:
        if not dispatch:
            return lifecycle.finish(self.db, task_id, outcome), None
        # the freed slot goes to the oldest queued task in the same transaction
        return lifecycle.finish_and_claim(self.db, task_id, outcome, self.slots(), self.name)
