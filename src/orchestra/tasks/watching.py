"""Watching running tasks: exits heard at once, a periodic sweep, adoption after a restart.

Local tasks are settled from what their supervisor left (any Orchestra process on the
machine may do it); remote tasks are settled by their worker, or by the sweep here once
their lease ran out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select

from orchestra.outages import Outage
from orchestra.storage import space
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import COLD, WARM, TaskRecord
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.executors.base import Executor, Handle, LocalRuns
    from orchestra.storage.db import Database
    from orchestra.tasks.dispatching import Dispatcher
    from orchestra.tasks.waiting import Waiters

_LOGGER = logging.getLogger(__name__)
Conclude = Callable[[int, "Mapping[str, Any]", Outcome], Outcome]
LAUNCH_WINDOW = timedelta(seconds=60)  # a claimed task may take this long to get a handle
_RUNNING_ROWS = select(TaskRow.id, TaskRow.kill_requested, TaskRow.executor).where(
    TaskRow.status == TaskStatus.RUNNING
)


def _as_it_is(task_id: int, spec: Mapping[str, Any], outcome: Outcome) -> Outcome:
    """The default conclusion: the outcome as the executor read it."""
    return outcome


class Watcher:
    """Follows the running tasks; settles each one exactly once, whoever notices first."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        executor: Executor,
        dispatcher: Dispatcher | None,
        waiters: Waiters,
    ) -> None:
        self.settings = settings
        self.db = db
        self.executor = executor
        self.local = cast("LocalRuns", executor) if executor.runs_here else None
        self.dispatcher = dispatcher
        self.waiters = waiters
        self._watched: set[int] = set()
        self._handles: dict[int, Handle] = {}  # the supervisors this process watches
        self.serving = False
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        # what a task's end means beyond its status (a training's model becomes a version)
        self.conclude: Conclude = _as_it_is
        if dispatcher is not None:
            dispatcher.on_started = self.watch

    def is_watched(self, task_id: int) -> bool:
        """True when an exit watcher of this process will settle the task."""
        return task_id in self._watched

    def started_as(self, task_id: int) -> str | None:
        """``warm`` or ``cold`` for a task this process launched and watches; else None."""
        handle = self._handles.get(task_id)
        if handle is None or "warm" not in handle:
            return None
        return WARM if handle["warm"] else COLD

    def watch(self, task_id: int, handle: Handle, spec: Mapping[str, Any] | None = None) -> None:
        """Settle the task as soon as its supervisor ends (a server only)."""
        if task_id in self._watched or not self.serving or self.local is None:
            return
        self._watched.add(task_id)
        self._handles[task_id] = handle
        if not self.local.watch(handle, lambda: self._on_exit(task_id, spec)):
            self._watched.discard(task_id)
            self._handles.pop(task_id, None)

    def _on_exit(self, task_id: int, spec: Mapping[str, Any] | None) -> None:
        ended = self._handles.pop(task_id, None)
        assert self.local is not None and self.dispatcher is not None
        outcome = self.local.outcome(task_id, spec) if spec is not None else None
        if outcome is not None and spec is not None and spec.get("kind") == "train":
            # storing a model takes a while (a second or so per GB): not on the thread that
            # hears every task's end. Still watched meanwhile, so the sweep leaves it alone.
            threading.Thread(
                target=self._conclude, args=(task_id, spec, outcome), daemon=True,
                name=f"orchestra-model-{task_id}",
            ).start()  # fmt: skip
            return
        self._watched.discard(task_id)
        if outcome is not None:
            # the common case, kept short: no read of the row, one conditional update
            self.dispatcher.finish(task_id, outcome, True)
        else:
            self._settle(task_id, ended)

    def _conclude(self, task_id: int, spec: Mapping[str, Any], outcome: Outcome) -> None:
        """A training's end: its model stored as a version, then its final status written."""
        assert self.dispatcher is not None
        try:
            self.dispatcher.finish(task_id, self.conclude(task_id, spec, outcome), True)
        except Exception:  # the sweep settles it again: the version is made once per task
            _LOGGER.exception("task %s: its model could not be stored now", task_id)
        finally:
            self._watched.discard(task_id)

    def _handle(self, row: TaskRecord, known: Handle | None = None) -> Handle | None:
        """Where the task's supervisor is: the row (older servers), memory, or its folder."""
        assert self.local is not None
        found = row.handle or known or self._handles.get(row.id)
        return found if found is not None else self.local.find(row.id)

    def handle_of(self, row: TaskRecord) -> Handle | None:
        """The supervisor of a local task, if it can be found now."""
        return self._handle(row) if self.local is not None else None

    def settle_unwatched(self, row: TaskRecord) -> bool:
        """Settle a running local task that no thread here watches; True when it did."""
        if row.status != TaskStatus.RUNNING or row.id in self._watched:
            return False
        return self.settle(row.id) if self._settles(row.executor) else False

    def _settles(self, executor: str) -> bool:
        return self.local is not None and executor == self.executor.name

    def settle(self, task_id: int) -> bool:
        """Settle a running task whose process has ended; True when this call settled it."""
        return self._settle(task_id, None)

    def _settle(self, task_id: int, ended: Handle | None) -> bool:
        row = lifecycle.read(self.db, task_id)
        if row is None or row.status != TaskStatus.RUNNING or self.local is None:
            return False
        outcome = self.local.outcome(task_id, row.spec or {})
        handle = self._handle(row, ended)
        if outcome is None:
            if handle is None:
                if row.started and lifecycle.now() - row.started < LAUNCH_WINDOW:
                    return False  # still being launched by some process
            elif self.local.is_alive(handle):
                self.watch(task_id, handle)  # adopt it
                if row.kill_requested:  # asked while no process could find it yet
                    self.local.kill(handle)
                return False
            outcome = self.local.outcome(task_id, row.spec or {})  # written just before it ended?
        if outcome is None:
            if handle is not None:  # whatever the dead supervisor left running goes too
                self.local.kill(handle)
            outcome = self.local.orphan_outcome(task_id, handle, row.kill_requested)
        else:
            outcome = self.conclude(task_id, row.spec or {}, outcome)
        assert self.dispatcher is not None
        return self.dispatcher.finish(task_id, outcome, True)

    def reconcile(self) -> None:
        """Settle or adopt every running task, settle lost remote work, start what may start."""
        space.keep_reserve(self.settings)
        for final in lifecycle.settle_lost(self.db, self.settings.worker_lease):
            self.waiters.wake(final.id, final)
        if self.local is None:
            self.executor.reconcile()
            return
        with self.db.connect() as connection:
            running = list(connection.execute(_RUNNING_ROWS))
        for task_id, kill_requested, executor in running:
            if not self._settles(executor) or (task_id in self._watched and not kill_requested):
                continue  # another executor's, or its exit watcher settles it
            try:
                self.settle(task_id)
            except Exception:
                _LOGGER.exception("could not reconcile task %s", task_id)
        assert self.dispatcher is not None
        self.dispatcher.dispatch()

    # -- server lifetime --------------------------------------------------------------------

    def start(self) -> None:
        """Server mode: reconcile, then watch exits and sweep the database periodically."""
        if self.serving:
            return
        self.executor.open()
        self.serving = True
        self._stopping.clear()
        self.reconcile()
        self._sweeper = threading.Thread(target=self._sweep, name="orchestra-sweep", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        """Stop the background threads; running tasks go on and are adopted later."""
        if not self.serving:
            return
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        self.serving = False
        self._watched.clear()
        self.executor.close()

    def _sweep(self) -> None:
        outage = Outage(_LOGGER, "the task sweep")  # the database may be away for a while
        while not self._stopping.wait(self.settings.poll_interval):
            try:
                self.reconcile()
            except Exception as exc:
                outage.failed(exc, traceback=True)
            else:
                outage.worked()
