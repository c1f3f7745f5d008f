"""The task runner: submit, queue, dispatch, wait, kill, output, log and reconcile tasks.

Task state lives in the database and in each task's folder; this object only holds what
makes a server answer sooner (who waits for which task, which supervisors it watches).
Any Orchestra process may settle a task from what its supervisor left behind.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, null, select

from orchestra import catalogs
from orchestra.errors import InvalidInput, NotFound, WrongState, is_disk_full
from orchestra.executors import get_executor, sandbox
from orchestra.executors.base import Handle
from orchestra.manifest import Manifest, bind_arguments, command_args
from orchestra.process import clean_env
from orchestra.records import OutputFile, TaskInfo, TaskPage
from orchestra.storage import space
from orchestra.storage.files import InstallFolder, TaskFolder, safe_join
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import Outcome, TaskRecord
from orchestra.tasks.status import TaskStatus

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.registry import Registry
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
MAX_ID = 2**63 - 1
MAX_WAIT = 60.0  # seconds a single get() may wait
POLL_SLICE = 0.05  # seconds between looks at a task that another process supervises
HANDLE_SLICE = 0.01  # seconds between looks for the supervisor of a task being killed
HANDLE_WAIT = 5.0  # seconds kill() looks for it; the sweep signals it if it shows up later
LAUNCH_WINDOW = timedelta(seconds=60)  # a claimed task may take this long to get a handle
LOG_BYTES = 1024 * 1024  # the end of each log that log() returns
_ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
# a listed task's columns; the run specification and the handle are not shown, not read
_LISTED = [
    null().label(c.name) if c.name in ("spec", "handle") else c
    for c in TaskRow.__table__.columns  # type: ignore[attr-defined]
]


def check_id(task_id: Any) -> int:
    """A task id that can exist (a positive 63-bit integer); NotFound otherwise."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 < task_id <= MAX_ID:
        raise NotFound(f"no task {task_id}")
    return task_id


class _Waiting(threading.Event):
    """Set when a task moved on; carries its final row when a finish set it."""

    final: TaskRecord | None = None


class TaskRunner:
    """Runs module tasks through the executor; the database holds the queue and the states."""

    def __init__(self, settings: Settings, db: Database, registry: Registry) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.executor = get_executor(settings)
        self._events: dict[int, _Waiting] = {}
        self._events_lock = threading.Lock()
        self._watched: set[int] = set()
        self._handles: dict[int, Handle] = {}  # the supervisors this process watches
        self._serving = False
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._short_of_space = False

    # -- submitting and dispatching ---------------------------------------------------------

    def submit(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Check the arguments, queue a task and start it when a slot is free."""
        manifest, install = self.registry.runnable(module_id)
        bound = bind_arguments(manifest, args, max_length=self.settings.max_arg_length)
        timeout = manifest.timeout or self.settings.task_timeout
        row, slot_free = lifecycle.create(
            self.db,
            module_id=module_id,
            args=bound,
            timeout=timeout,
            install_dir=install.root.name,
            build_spec=lambda task_id: self._spec(task_id, manifest, install, bound, timeout),
            max_running=self._slots(),
        )
        if row.status == TaskStatus.RUNNING:
            # claimed with the insert: the shortest way to a started task, answered from
            # what the insert wrote
            return self._info(row if self._launch(row) else self._row(row.id))
        if slot_free and self.dispatch():
            return self._info(self._row(row.id))  # it may be among those just started
        self._prepare_folder(row.id)
        return self._info(row)

    def _slots(self) -> int:
        """Tasks that may run at once now: none while the data folder is short of space."""
        if not space.low(self.settings):
            self._short_of_space = False
            return self.settings.max_running
        if not self._short_of_space:  # said once; the sweep starts them when space is back
            self._short_of_space = True
            _LOGGER.warning("less than ORCHESTRA_MIN_FREE_MB free: queued tasks wait")
        return 0

    def _prepare_folder(self, task_id: int) -> None:
        """Make a queued task's folder now, so that starting it later is quicker."""
        try:
            TaskFolder(self.settings.tasks_dir, task_id).output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # its launch tries again, and reports what fails
            _LOGGER.warning("could not make the folder of task %s: %s", task_id, exc)

    def _spec(
        self,
        task_id: int,
        manifest: Manifest,
        install: InstallFolder,
        bound: Mapping[str, str],
        timeout: float,
    ) -> dict[str, Any]:
        folder = TaskFolder(self.settings.tasks_dir, task_id)
        env_bin = install.env / "bin"
        base = clean_env()
        env = clean_env(
            {
                "PATH": f"{env_bin}:{base['PATH']}",
                "VIRTUAL_ENV": str(install.env),
                "ORCHESTRA_TASK_ID": str(task_id),
            }
        )
        argv = [str(install.python), *command_args(manifest.executable, str(folder.output), bound)]
        outputs = list(manifest.output_files) if manifest.output_files else None
        grace = self.settings.kill_grace
        spec = {"task_id": task_id, "argv": argv, "cwd": str(install.code), "env": env,
                "timeout": timeout, "grace": grace, "outputs": outputs,
                "catalog": catalogs.header_facts(manifest)}  # fmt: skip
        return sandbox.confine(
            spec, settings=self.settings, install=install, output=folder.output,
            network=manifest.network, limits=manifest.limits,
        )  # fmt: skip

    def dispatch(self) -> int:
        """Start queued tasks, oldest first, while fewer than ``max_running`` run; how many."""
        started, slots = 0, self._slots()
        # a read first: the write lock is taken only when a claim is likely to succeed
        while lifecycle.may_claim(self.db, slots):
            row = lifecycle.claim_next(self.db, slots)
            if row is None:
                break
            self._launch(row)
            started += 1
        return started

    def _launch(self, row: TaskRecord) -> bool:
        """Start a claimed task's supervisor; False when it could not start (then settled)."""
        # No write after the start: the supervisor records its identity in supervisor.json,
        # where any process finds it (settle, kill), so the row keeps no handle.
        folder = TaskFolder(self.settings.tasks_dir, row.id)
        try:
            if not row.spec:
                raise OSError("the task has no run specification")
            folder.output.mkdir(parents=True, exist_ok=True)  # made at submit when it queued
            handle = self.executor.start(task_id=row.id, task_dir=folder.root, spec=row.spec)
        except OSError as exc:
            self._finish(row.id, Outcome(TaskStatus.ERROR, None, f"could not start: {exc}"), False)
            return False
        self._watch(row.id, handle, row.spec)
        return True

    def _watch(self, task_id: int, handle: Handle, spec: dict | None = None) -> None:
        if task_id in self._watched or not self._serving:
            return
        self._watched.add(task_id)
        self._handles[task_id] = handle
        if not self.executor.watch(handle, lambda: self._on_exit(task_id, spec)):
            self._watched.discard(task_id)
            self._handles.pop(task_id, None)

    def _on_exit(self, task_id: int, spec: dict | None) -> None:
        ended = self._handles.pop(task_id, None)
        self._watched.discard(task_id)
        folder = TaskFolder(self.settings.tasks_dir, task_id)
        result = lifecycle.read_result(folder) if spec is not None else None
        if spec is not None and result is not None:
            # the common case, kept short: no read of the row, one conditional update
            self._finish(task_id, lifecycle.outcome_from_result(folder, result, spec), True)
        else:
            self._settle(task_id, ended)

    def _handle(self, row: TaskRecord, known: Handle | None = None) -> Handle | None:
        """Where the task's supervisor is: the row (older servers), memory, or its folder."""
        found = row.handle or known or self._handles.get(row.id)
        if found is None:
            found = self.executor.find(TaskFolder(self.settings.tasks_dir, row.id).root)
        return found

    # -- settling ---------------------------------------------------------------------------

    def settle(self, task_id: int) -> bool:
        """Settle a running task whose process has ended; True when this call settled it."""
        return self._settle(task_id, None)

    def _settle(self, task_id: int, ended: Handle | None) -> bool:
        row = lifecycle.read(self.db, task_id)
        if row is None or row.status != TaskStatus.RUNNING:
            return False
        folder = TaskFolder(self.settings.tasks_dir, task_id)
        result = lifecycle.read_result(folder)
        handle = self._handle(row, ended)
        if result is None:
            if handle is None:
                if row.started and lifecycle.now() - row.started < LAUNCH_WINDOW:
                    return False  # still being launched by some process
            elif self.executor.is_alive(handle):
                self._watch(task_id, handle)  # adopt it
                if row.kill_requested:  # asked while no process could find it yet
                    self.executor.kill(handle, grace=self.settings.kill_grace)
                return False
            result = lifecycle.read_result(folder)  # written just before the supervisor ended?
        if result is None:
            if handle is not None:  # whatever the dead supervisor left running goes too
                self.executor.kill(handle, grace=self.settings.kill_grace)
            outcome = lifecycle.orphan_outcome(handle, row.kill_requested)
        else:
            outcome = lifecycle.outcome_from_result(folder, result, row.spec or {})
        return self._finish(task_id, outcome, True)

    def _finish(self, task_id: int, outcome: Outcome, dispatch: bool) -> bool:
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
                if claimed is not None and not self._launch(claimed):
                    self.dispatch()  # it could not start: the slot is free again
            finally:
                self._wake(task_id, final)
        return final is not None

    def _write_finish(
        self, task_id: int, outcome: Outcome, dispatch: bool
    ) -> tuple[TaskRecord | None, TaskRecord | None]:
        if not dispatch:
            return lifecycle.finish(self.db, task_id, outcome), None
        # the freed slot goes to the oldest queued task in the same transaction
        return lifecycle.finish_and_claim(self.db, task_id, outcome, self._slots())

    def reconcile(self) -> None:
        """Settle or adopt every running task, then start what the queue allows."""
        space.keep_reserve(self.settings)
        query = select(TaskRow.id, TaskRow.kill_requested).where(
            TaskRow.status == TaskStatus.RUNNING
        )
        with self.db.connect() as connection:
            running = list(connection.execute(query))
        for task_id, kill_requested in running:
            if task_id in self._watched and not kill_requested:
                continue  # its exit watcher settles it
            try:
                self.settle(task_id)
            except Exception:
                _LOGGER.exception("could not reconcile task %s", task_id)
        self.dispatch()

    # -- server lifetime --------------------------------------------------------------------

    def start(self) -> None:
        """Server mode: reconcile, then watch exits and sweep the database periodically."""
        if self._serving:
            return
        self.executor.open()
        self._serving = True
        self._stopping.clear()
        self.reconcile()
        self._sweeper = threading.Thread(target=self._sweep, name="orchestra-sweep", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        """Stop the background threads; running tasks go on and are adopted later."""
        if not self._serving:
            return
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        self._serving = False
        self._watched.clear()
        self.executor.close()

    def _sweep(self) -> None:
        while not self._stopping.wait(self.settings.poll_interval):
            try:
                self.reconcile()
            except Exception:
                _LOGGER.exception("task sweep failed")

    # -- waiting ----------------------------------------------------------------------------

    def _event(self, task_id: int) -> _Waiting:
        with self._events_lock:
            return self._events.setdefault(task_id, _Waiting())

    def _wake(self, task_id: int, final: TaskRecord | None = None) -> None:
        with self._events_lock:
            event = self._events.pop(task_id, None)
        if event is not None:
            event.final = final
            event.set()

    def _wait_final(self, task_id: int, timeout: float) -> TaskRecord:
        """The task's row once final, or when ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._event(task_id)  # before the read, so a settle cannot slip between
            try:
                row = self._row(task_id)
            except NotFound:
                self._wake(task_id)
                raise
            remaining = deadline - time.monotonic()
            if TaskStatus(row.status).is_final:
                self._wake(task_id)  # nothing will set it now: drop it, or it stays forever
                return row
            if remaining <= 0:
                return row
            if self._check_elsewhere(row):
                continue
            watched = task_id in self._watched or (self._serving and row.status == "queued")
            woken = event.wait(min(remaining, 1.0 if watched else POLL_SLICE))
            if woken and event.final is not None:
                return event.final  # as the finishing transaction wrote it: no second read

    def _check_elsewhere(self, row: TaskRecord) -> bool:
        """Move a task along that no thread of this process is watching; True if it moved."""
        if row.status == TaskStatus.RUNNING and row.id not in self._watched:
            return self.settle(row.id)
        if row.status == TaskStatus.QUEUED and not self._serving:
            self.dispatch()  # no server: whoever waits starts what the queue allows
        return False

    # -- reading ----------------------------------------------------------------------------

    def _row(self, task_id: int) -> TaskRecord:
        check_id(task_id)
        row = lifecycle.read(self.db, task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        return row

    def get(self, task_id: int, *, wait: float = 0.0) -> TaskInfo:
        """One task; with ``wait``, answer once it is final or up to ``wait`` (max 60) s."""
        if wait > 0:
            return self._info(self._wait_final(check_id(task_id), min(wait, MAX_WAIT)))
        row = self._row(task_id)
        if not TaskStatus(row.status).is_final and self._check_elsewhere_tolerant(row):
            row = self._row(task_id)
        return self._info(row)

    def _check_elsewhere_tolerant(self, row: TaskRecord) -> bool:
        """``_check_elsewhere`` for a read: a full disk leaves the row as it is, not an error."""
        try:
            return self._check_elsewhere(row)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            _LOGGER.warning("task %s not settled yet: the disk is full", row.id)
            return False

    def list(
        self,
        *,
        status: str | None = None,
        module: int | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        """Tasks newest first, filtered; pages by offset or (faster when deep) by cursor."""
        conditions = _filters(status, module)
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit: {limit} is not between 1 and 1000", key="limit")
        if offset < 0:
            raise InvalidInput(f"offset: {offset} must not be negative", key="offset")
        page = select(TaskRow.id).where(*conditions).order_by(TaskRow.id.desc()).limit(limit + 1)
        if cursor:
            page = page.where(TaskRow.id < _decode_cursor(cursor))
        else:
            page = page.offset(offset)
        with self.db.connect() as connection:
            count = select(func.count()).select_from(TaskRow).where(*conditions)
            total = connection.execute(count).scalar() or 0
            # ids first, from an index alone: skipping deep into the list then never reads the
            # rows it skips (each carries its run specification), only the page's own
            ids = list(connection.execute(page).scalars())
            wanted = ids[:limit]
            rows = connection.execute(
                select(*_LISTED).where(TaskRow.id.in_(wanted)).order_by(TaskRow.id.desc())
            )
            tasks = tuple(self._info(TaskRecord(*r)) for r in rows)
        next_cursor = _encode_cursor(wanted[-1]) if len(ids) > limit else None
        return TaskPage(tasks, total, limit, 0 if cursor else offset, next_cursor)

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status."""
        with self.db.read() as session:
            pairs = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status))
            found = {status: count for status, count in pairs}
        return {s.value: int(found.get(s.value, 0)) for s in TaskStatus}

    def active_for_module(self, module_id: int) -> builtins.list[int]:
        """Ids of the module's queued and running tasks."""
        with self.db.read() as session:
            query = select(TaskRow.id).where(
                TaskRow.module_id == module_id, TaskRow.status.in_(_ACTIVE)
            )
            return list(session.scalars(query))

    def _info(self, row: TaskRecord) -> TaskInfo:
        output = None
        if row.output is not None:
            output = tuple(OutputFile(str(f["name"]), int(f["size"])) for f in row.output)
        return TaskInfo(
            id=row.id, module=row.module_id, args=dict(row.args or {}), status=row.status,
            created=row.created, started=row.started, finished=row.finished,
            exit_code=row.exit_code, error=row.error, output=output,
        )  # fmt: skip

    # -- changing ---------------------------------------------------------------------------

    def kill(self, task_id: int) -> TaskInfo:
        """Drop a queued task or stop a running one's whole tree; WrongState once final."""
        check_id(task_id)
        before = lifecycle.request_kill(self.db, task_id)
        if before is None:
            raise NotFound(f"no task {task_id}")
        if before.is_final:
            raise WrongState(f"task {task_id} has already ended ({before.value})")
        if before == TaskStatus.QUEUED:
            self._wake(task_id)
            return self._info(self._row(task_id))
        self._signal_supervisor(task_id)
        return self._info(self._wait_final(task_id, self.settings.kill_grace + 5.0))

    def _signal_supervisor(self, task_id: int) -> None:
        """Ask a running task's supervisor to stop, once it can be found (it may be starting)."""
        deadline = time.monotonic() + HANDLE_WAIT
        while True:
            row = self._row(task_id)
            if row.status != TaskStatus.RUNNING:
                return
            handle = self._handle(row)
            if handle is not None:
                self.executor.kill(handle, grace=self.settings.kill_grace)
                return
            if time.monotonic() >= deadline:
                return  # the sweep signals it when it shows up: kill_requested is set
            time.sleep(HANDLE_SLICE)

    def delete(self, task_id: int) -> None:
        """Forget a finished task: its row and its folder."""
        row = self._row(task_id)
        folder = TaskFolder(self.settings.tasks_dir, task_id).root
        if not TaskStatus(row.status).is_final:
            raise WrongState(f"task {task_id} is {row.status}; only ended tasks can be deleted")
        try:
            deleted = lifecycle.delete_final(self.db, [task_id])
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # the database needs room to forget it: its files go first, they are what frees it
            shutil.rmtree(folder, ignore_errors=True)
            deleted = lifecycle.delete_final(self.db, [task_id])
        if not deleted:
            raise WrongState(f"task {task_id} is {row.status}; only ended tasks can be deleted")
        shutil.rmtree(folder, ignore_errors=True)

    def forget_module(self, module_id: int) -> None:
        """Kill the module's active tasks, then delete all its task rows and folders."""
        for task_id in self.active_for_module(module_id):
            try:
                self.kill(task_id)
            except (WrongState, NotFound):
                pass  # ended meanwhile
        with self.db.read() as session:
            ids = list(session.scalars(select(TaskRow.id).where(TaskRow.module_id == module_id)))
        for task_id in lifecycle.delete_final(self.db, ids):
            shutil.rmtree(TaskFolder(self.settings.tasks_dir, task_id).root, ignore_errors=True)

    # -- files ------------------------------------------------------------------------------

    def _done_row(self, task_id: int) -> TaskRecord:
        row = self._row(task_id)
        if row.status == TaskStatus.RUNNING and row.id not in self._watched:
            self.settle(task_id)
            row = self._row(task_id)
        if row.status != TaskStatus.DONE:
            raise WrongState(f"task {task_id} is {row.status}, not done: it has no output")
        return row

    def output_files(self, task_id: int) -> builtins.list[tuple[str, Path]]:
        """A done task's output files as (name, real path) pairs."""
        row = self._done_row(task_id)
        base = TaskFolder(self.settings.tasks_dir, task_id).output
        files = []
        for item in row.output or []:
            path = safe_join(base, str(item["name"]))
            if path.is_file():
                files.append((str(item["name"]), path))
        return files

    def output_file(self, task_id: int, name: str) -> Path:
        """One output file of a done task; NotFound for anything else."""
        row = self._done_row(task_id)
        if name not in {str(item["name"]) for item in row.output or []}:
            raise NotFound(f"task {task_id} has no output file {name!r}")
        path = safe_join(TaskFolder(self.settings.tasks_dir, task_id).output, name)
        if not path.is_file():
            raise NotFound(f"task {task_id} has no output file {name!r}")
        return path

    def log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far (the last megabyte of each)."""
        self._row(task_id)
        folder = TaskFolder(self.settings.tasks_dir, task_id)
        return {"stdout": _log_tail(folder.stdout), "stderr": _log_tail(folder.stderr)}


def _log_tail(path: Path) -> str:
    text = lifecycle.tail_text(path, LOG_BYTES)
    try:
        cut = path.stat().st_size > LOG_BYTES
    except OSError:
        cut = False
    return f"[earlier output omitted]\n{text}" if cut else text


def _filters(status: str | None, module: int | None) -> list[Any]:
    conditions: list[Any] = []
    if status is not None:
        if status not in {s.value for s in TaskStatus}:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise InvalidInput(f"status: {status!r} is not one of {allowed}", key="status")
        conditions.append(TaskRow.status == status)
    if module is not None:
        if isinstance(module, bool) or not isinstance(module, int) or not 0 < module <= MAX_ID:
            raise InvalidInput(f"module: {module!r} is not a module id", key="module")
        conditions.append(TaskRow.module_id == module)
    return conditions


def _encode_cursor(task_id: int) -> str:
    return base64.urlsafe_b64encode(f"before:{task_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        value = int(number)
        if prefix != "before" or not 0 < value <= MAX_ID + 1:
            raise ValueError(raw)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor: not a cursor this list gave out", key="cursor") from None
    return value
