"""The task runner: the one entry to tasks for the service, built from parts named for their job.

- ``submitting.Submitter``: arguments checked, the run fixed as a ``TaskSpec``, the row inserted;
- ``dispatching.Dispatcher``: claims under ``max_running`` and starts tasks here (local only);
- ``watching.Watcher``: exits, the periodic sweep, adoption, lost remote work;
- ``outputs.OutputReader`` and ``queries``: what a task left, and the task list;
- ``reading.TaskReader``: one task, at once or once it has ended;
- ``waiting.Waiters``: who waits for which task in this process.

Task state lives in the database and in each task's folder; this object only holds what
makes a server answer sooner (who waits for which task, which supervisors it watches).
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from orchestra.errors import NotFound, WrongState, is_disk_full
from orchestra.executors import get_executor
from orchestra.executors.base import TaskSpec
from orchestra.models.trainings import Trainings
from orchestra.records import TaskInfo, TaskPage
from orchestra.storage.files import TaskFolder
from orchestra.tasks import lifecycle, queries
from orchestra.tasks.dispatching import Dispatcher
from orchestra.tasks.lifecycle import TaskRecord
from orchestra.tasks.outputs import OutputReader
from orchestra.tasks.reading import TaskReader
from orchestra.tasks.status import TaskStatus
from orchestra.tasks.submitting import Submitter
from orchestra.tasks.waiting import Waiters
from orchestra.tasks.watching import Watcher

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.executors.base import LocalRuns
    from orchestra.registry import Registry
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
HANDLE_SLICE = 0.01  # seconds between looks for the supervisor of a task being killed
HANDLE_WAIT = 5.0  # seconds kill() looks for it; the sweep signals it if it shows up later


def process_name() -> str:
    """This process's name as the worker of the tasks it claims: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskRunner:
    """Runs module tasks through the executor; the database holds the queue and the states."""

    def __init__(self, settings: Settings, db: Database, registry: Registry) -> None:
        self.settings = settings
        self.db = db
        self.executor = get_executor(settings)
        self.waiters = Waiters()
        self.submitter = Submitter(settings, db, registry, self.executor.name)
        self.dispatcher: Dispatcher | None = None
        if self.executor.runs_here:
            local = cast("LocalRuns", self.executor)
            self.dispatcher = Dispatcher(settings, db, local, self.waiters, process_name())
        self.watcher = Watcher(settings, db, self.executor, self.dispatcher, self.waiters)
        self.trainings = Trainings(settings, db)
        self.watcher.conclude = self.trainings.conclude
        self.outputs = OutputReader(settings.tasks_dir, db, self.watcher.settle_unwatched)
        self.reader = TaskReader(db, self.waiters, self.watcher, self.dispatch,
                                 starts_here=self.dispatcher is not None)  # fmt: skip
        self.get = self.reader.get
        self.hears_end = self.reader.hears_end
        self.will_hear = self.reader.will_hear

    # -- submitting -------------------------------------------------------------------------

    def submit(self, module_id: int, args: Mapping[str, Any], *, kind: str = "run") -> TaskInfo:
        """Check the arguments, queue a task (a run or a training) and start it when it may."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            row, _ = self.submitter.create(module_id, args, claim_for=None, kind=kind)
            if row.status == TaskStatus.QUEUED:  # not an earlier answer reused
                self.waiters.expect(row.id)
                self._send(row)
            return queries.info(row)
        row, slot_free = self.submitter.create(
            module_id, args, claim_for=dispatcher.name, slots=dispatcher.slots(), kind=kind
        )
        if row.status == TaskStatus.DONE:  # an earlier answer reused
            return queries.info(row)
        self.waiters.expect(row.id)
        if row.status == TaskStatus.RUNNING:
            # claimed with the insert: the shortest way to a started task, answered from
            # what the insert wrote
            started = dispatcher.launch(row)
            return queries.info(row if started else queries.row(self.db, row.id))
        if slot_free and dispatcher.dispatch():
            return queries.info(queries.row(self.db, row.id))  # it may be among those started
        dispatcher.prepare_folder(row.id)
        return queries.info(row)

    def _send(self, row: TaskRecord) -> None:
        """Hand a queued task to the remote executor; its reconciler resends what fails."""
        try:
            self.executor.send(TaskSpec.from_json(row.spec or {}))
        except Exception:
            _LOGGER.exception("could not send task %s; it stays queued", row.id)

    def dispatch(self) -> int:
        """Start what the queue and the limit allow (local executor); how many started."""
        return self.dispatcher.dispatch() if self.dispatcher is not None else 0

    def settle(self, task_id: int) -> bool:
        """Settle a running local task whose process has ended; True when this call did."""
        return self.watcher.settle(task_id)

    def reconcile(self) -> None:
        """Settle or adopt every running task, then start what the queue allows."""
        self.watcher.reconcile()

    # -- server lifetime --------------------------------------------------------------------

    def start(self) -> None:
        """Server mode: reconcile, then watch exits and sweep the database periodically."""
        self.watcher.start()
        listen = getattr(self.executor, "listen", None)
        if listen is not None:  # remote tasks: wake their waiters when a worker ends one
            listen(self.waiters.wake)
            self.reader.listening = True

    def stop(self) -> None:
        """Stop the background threads; running tasks go on and are adopted later."""
        self.watcher.stop()

    # -- reading ----------------------------------------------------------------------------

    def list(
        self,
        *,
        status: str | None = None,
        module: int | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
        submitted_by: str | None = None,
        user: str | None = None,
    ) -> TaskPage:
        """Tasks newest first, filtered; pages by offset or (faster when deep) by cursor."""
        return queries.page(
            self.db, status=status, module=module, limit=limit, offset=offset, cursor=cursor,
            who=(submitted_by, user),
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status."""
        return queries.counts(self.db)

    def queued_by_submitter(self) -> builtins.list[tuple[str, str | None, int]]:
        """How many tasks each submitter (token name, user) has waiting."""
        return queries.queued_by_submitter(self.db)

    def starts(self) -> dict[str, int]:
        """How many tasks started warm or cold, and how many reused an earlier answer."""
        return queries.starts(self.db)

    def spares(self) -> dict[str, int]:
        """This process's spare interpreters, ready and starting (none where workers run tasks)."""
        if not self.executor.runs_here:
            return {"ready": 0, "starting": 0}
        return cast("LocalRuns", self.executor).spares()

    def active_for_module(self, module_id: int) -> builtins.list[int]:
        """Ids of the module's queued and running tasks."""
        return queries.of_module(self.db, module_id, active_only=True)

    # -- changing ---------------------------------------------------------------------------

    def kill(self, task_id: int, *, by: str | None = None) -> TaskInfo:
        """Drop a queued task or stop a running one's whole tree; WrongState once final.

        ``by``: who asks (audited when it is not the task's submitter).
        """
        queries.check_id(task_id)
        before = lifecycle.request_kill(self.db, task_id, by=by)
        if before is None:
            raise NotFound(f"no task {task_id}")
        if before.is_final:
            raise WrongState(f"task {task_id} has already ended ({before.value})")
        if before == TaskStatus.QUEUED:
            self.waiters.wake(task_id)
            return queries.info(queries.row(self.db, task_id))
        row = queries.row(self.db, task_id)
        if self.watcher.local is not None and row.executor == self.executor.name:
            self._signal_supervisor(task_id)
        else:  # the flag is in the database; this only makes the worker act at once
            self.executor.signal_kill(task_id, row.worker)
        return queries.info(self.reader.wait_final(task_id, self.settings.kill_grace + 5.0))

    def _signal_supervisor(self, task_id: int) -> None:
        """Ask a running task's supervisor to stop, once it can be found (it may be starting)."""
        local = self.watcher.local
        assert local is not None
        deadline = time.monotonic() + HANDLE_WAIT
        while True:
            row = queries.row(self.db, task_id)
            if row.status != TaskStatus.RUNNING:
                return
            handle = self.watcher.handle_of(row)
            if handle is not None:
                local.kill(handle)
                return
            if time.monotonic() >= deadline:
                return  # the sweep signals it when it shows up: kill_requested is set
            time.sleep(HANDLE_SLICE)

    def delete(self, task_id: int, *, by: str | None = None) -> None:
        """Forget a finished task: its row and its folder (``by``: who asks, as for kill)."""
        row = queries.row(self.db, task_id)
        folder = TaskFolder(self.settings.tasks_dir, task_id).root
        if not TaskStatus(row.status).is_final:
            raise WrongState(f"task {task_id} is {row.status}; only ended tasks can be deleted")
        try:
            deleted = lifecycle.delete_final(self.db, [task_id], by=by)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # the database needs room to forget it: its files go first, they are what frees it
            shutil.rmtree(folder, ignore_errors=True)
            deleted = lifecycle.delete_final(self.db, [task_id], by=by)
        if not deleted:
            raise WrongState(f"task {task_id} is {row.status}; only ended tasks can be deleted")
        self.waiters.forget_final(deleted)
        shutil.rmtree(folder, ignore_errors=True)

    def forget_module(self, module_id: int) -> None:
        """Kill the module's active tasks, then delete all its task rows and folders."""
        for task_id in self.active_for_module(module_id):
            try:
                self.kill(task_id)
            except (WrongState, NotFound):
                pass  # ended meanwhile
        ids = queries.of_module(self.db, module_id)
        deleted = lifecycle.delete_final(self.db, ids)
        self.waiters.forget_final(deleted)
        for task_id in deleted:
            shutil.rmtree(TaskFolder(self.settings.tasks_dir, task_id).root, ignore_errors=True)

    # -- files ------------------------------------------------------------------------------

    def output_files(self, task_id: int) -> builtins.list[tuple[str, Path]]:
        """A done task's output files as (name, real path) pairs."""
        return self.outputs.files(task_id)

    def output_file(self, task_id: int, name: str) -> Path:
        """One output file of a done task; NotFound for anything else."""
        return self.outputs.file(task_id, name)

    def log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far (the last megabyte of each)."""
        return self.outputs.log(task_id)
