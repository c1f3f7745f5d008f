"""The only code that writes a task's status: one write transaction per move.

Every move is a conditional UPDATE (``WHERE status = <expected>``), so when two observers
(the exit watcher, the sweep, another process) settle the same task only one wins. The
functions here return what happened; the caller runs side effects after the commit.

The moves on a task's hot path (create, claim, finish, read) use prepared Core statements
on a plain connection: an ORM session costs several times more per transaction, and the
server runs these for every task.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, update

from orchestra import catalogs
from orchestra.storage.db import Database
from orchestra.storage.files import TaskFolder
from orchestra.storage.tables import TaskRow
from orchestra.tasks.status import FINAL, TaskStatus

_LOGGER = logging.getLogger(__name__)
TAIL_LINES = 20
TAIL_BYTES = 4096

# prepared once: each execution reuses the compiled form from the engine's cache
_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]
_COLUMNS = _TASKS.c
_RUNNING = TaskStatus.RUNNING.value
_QUEUED = TaskStatus.QUEUED.value
_INSERT = insert(_TASKS)
_SET_SPEC = (
    update(_TASKS)
    .where(_COLUMNS.id == bindparam("task_id"))
    .values(spec=bindparam("new_spec"), status=bindparam("new_status"),
            started=bindparam("new_started"))
)  # fmt: skip
_COUNT_RUNNING = select(func.count()).select_from(_TASKS).where(_COLUMNS.status == _RUNNING)
_OLDEST_QUEUED = (
    select(_COLUMNS.id).where(_COLUMNS.status == _QUEUED).order_by(_COLUMNS.id).limit(1)
)
_OLDER_QUEUED = (
    select(_COLUMNS.id)
    .where(_COLUMNS.status == _QUEUED, _COLUMNS.id < bindparam("task_id"))
    .limit(1)
)
# one statement where two would do: how many run, and which queued task is next (or older)
_SLOTS = select(_COUNT_RUNNING.scalar_subquery(), _OLDEST_QUEUED.scalar_subquery())
_SLOTS_BEFORE = select(_COUNT_RUNNING.scalar_subquery(), _OLDER_QUEUED.scalar_subquery())
_CLAIM = (
    update(_TASKS)
    .where(_COLUMNS.id == bindparam("task_id"), _COLUMNS.status == _QUEUED)
    .values(status=_RUNNING, started=bindparam("now"))
)
_FINISH = (
    update(_TASKS)
    .where(_COLUMNS.id == bindparam("task_id"), _COLUMNS.status == _RUNNING)
    .values(status=bindparam("new_status"), finished=bindparam("now"),
            exit_code=bindparam("new_exit_code"), error=bindparam("new_error"),
            output=bindparam("new_output"))
)  # fmt: skip
_ROW = select(_TASKS).where(_COLUMNS.id == bindparam("task_id"))
# where the database can answer an UPDATE with the rows it changed (SQLite 3.35+, PostgreSQL):
# a claim is one statement, and a finish hands over the final row without a second read
_CLAIM_NEXT = (
    update(_TASKS)
    .where(
        _COLUMNS.id == _OLDEST_QUEUED.scalar_subquery(),
        _COUNT_RUNNING.scalar_subquery() < bindparam("max_running"),
    )
    .values(status=_RUNNING, started=bindparam("now"))
    .returning(*_COLUMNS)
)
_FINISH_RETURNING = _FINISH.returning(*_COLUMNS)


@dataclass(slots=True)
class TaskRecord:
    """A task's row as read, in the table's column order.

    Plain values rather than ORM objects: building those costs more than the query on a
    task's hot path.
    """

    id: int
    module_id: int
    status: str
    args: dict[str, str]
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    output: list[dict[str, Any]] | None = None
    timeout: float | None = None
    install_dir: str | None = None
    executor: str = "local"
    handle: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    kill_requested: bool = False


if [f.name for f in fields(TaskRecord)] != [c.name for c in _COLUMNS]:
    raise RuntimeError("TaskRecord does not follow the columns of the tasks table")


def now() -> datetime:
    """The current time as naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Outcome:
    """How a task ended: what ``finish`` writes."""

    status: TaskStatus
    exit_code: int | None = None
    error: str | None = None
    output: list[dict[str, Any]] | None = None


# -- moves ------------------------------------------------------------------------------------


def create(
    db: Database,
    *,
    module_id: int,
    args: Mapping[str, str],
    timeout: float,
    install_dir: str | None,
    build_spec: Callable[[int], dict[str, Any]],
    max_running: int | None = None,
) -> tuple[TaskRecord, bool]:
    """Insert a task; ``build_spec(task_id)`` gives what the executor will run.

    With ``max_running``, the task is claimed (running) in the same transaction when a slot
    is free and no older task waits; otherwise it is queued. Also says whether a slot was
    free (when it was but the task is queued, older tasks wait for a dispatch).
    """
    values: dict[str, Any] = {
        "module_id": module_id, "status": _QUEUED, "args": dict(args), "created": now(),
        "timeout": timeout, "install_dir": install_dir, "executor": "local",
        "kill_requested": False, "started": None,
    }  # fmt: skip
    slot_free = max_running is None
    with db.begin_write() as connection:
        # the insert assigns the id that the spec needs (output folder, environment)
        inserted = connection.execute(_INSERT, values).inserted_primary_key
        assert inserted is not None
        task_id = int(inserted[0])
        values["spec"] = build_spec(task_id)
        if max_running is not None:
            running, older = connection.execute(_SLOTS_BEFORE, {"task_id": task_id}).one()
            slot_free = int(running or 0) < max_running
            if slot_free and older is None:
                values["status"], values["started"] = _RUNNING, values["created"]
        connection.execute(
            _SET_SPEC,
            {"task_id": task_id, "new_spec": values["spec"], "new_status": values["status"],
             "new_started": values["started"]},
        )  # fmt: skip
    return TaskRecord(id=task_id, **values), slot_free


def _next_claim(connection: Connection, max_running: int) -> int | None:
    """The oldest queued task's id when a slot is free, else None."""
    running, oldest = connection.execute(_SLOTS).one()
    return None if int(running or 0) >= max_running else oldest


def may_claim(db: Database, max_running: int) -> bool:
    """True when a task waits and a slot looks free: a cheap read before a claim."""
    with db.connect() as connection:
        return _next_claim(connection, max_running) is not None


def claim_next(db: Database, max_running: int) -> TaskRecord | None:
    """Move the oldest queued task to running when fewer than ``max_running`` run."""
    # one write transaction (BEGIN IMMEDIATE on SQLite): the count and the claim cannot
    # interleave with another process's, so the limit holds across processes
    with db.begin_write() as connection:
        return _claim(connection, max_running)


def _claim(connection: Connection, max_running: int) -> TaskRecord | None:
    if connection.dialect.update_returning:
        found = connection.execute(_CLAIM_NEXT, {"now": now(), "max_running": max_running})
        return _record(found.first())
    task_id = _next_claim(connection, max_running)
    if task_id is None:
        return None
    if connection.execute(_CLAIM, {"task_id": task_id, "now": now()}).rowcount != 1:
        return None
    return _read(connection, task_id)


def read(db: Database, task_id: int) -> TaskRecord | None:
    """One task row (read in a short transaction), or None."""
    with db.connect() as connection:
        return _read(connection, task_id)


def _read(connection: Connection, task_id: int) -> TaskRecord | None:
    return _record(connection.execute(_ROW, {"task_id": task_id}).first())


def _record(found: Any) -> TaskRecord | None:
    """A Core row of the tasks table (its columns in order) as a TaskRecord."""
    return None if found is None else TaskRecord(*found)


def request_kill(db: Database, task_id: int) -> TaskStatus | None:
    """Drop a queued task (killed) or flag a running one; the status found before the move."""
    with db.write() as session:
        status = session.scalar(select(TaskRow.status).where(TaskRow.id == task_id))
        if status is None:
            return None
        if status == TaskStatus.QUEUED:
            _move(
                session, task_id, TaskStatus.QUEUED, status=TaskStatus.KILLED, finished=now(),
                error="killed before it started",
            )  # fmt: skip
        elif status == TaskStatus.RUNNING:
            session.execute(
                update(TaskRow).where(TaskRow.id == task_id).values(kill_requested=True)
            )
        return TaskStatus(status)


def finish(db: Database, task_id: int, outcome: Outcome) -> TaskRecord | None:
    """Move a running task to its final state; its final row, None if another settled it."""
    with db.begin_write() as connection:
        return _finish(connection, task_id, outcome)


def finish_and_claim(
    db: Database, task_id: int, outcome: Outcome, max_running: int
) -> tuple[TaskRecord | None, TaskRecord | None]:
    """``finish``, then claim the oldest queued task in the same transaction when it won."""
    with db.begin_write() as connection:
        final = _finish(connection, task_id, outcome)
        if final is None:
            return None, None
        return final, _claim(connection, max_running)


def _finish(connection: Connection, task_id: int, outcome: Outcome) -> TaskRecord | None:
    values = {
        "task_id": task_id, "now": now(), "new_status": TaskStatus(outcome.status).value,
        "new_exit_code": outcome.exit_code, "new_error": outcome.error,
        "new_output": outcome.output,
    }  # fmt: skip
    if connection.dialect.update_returning:
        return _record(connection.execute(_FINISH_RETURNING, values).first())
    if connection.execute(_FINISH, values).rowcount != 1:
        return None
    return _read(connection, task_id)


def delete_final(db: Database, task_ids: list[int]) -> list[int]:
    """Delete the rows among ``task_ids`` that are final; the ids deleted."""
    if not task_ids:
        return []
    with db.write() as session:
        final = [s.value for s in FINAL]
        ids = list(
            session.scalars(
                select(TaskRow.id).where(TaskRow.id.in_(task_ids), TaskRow.status.in_(final))
            )
        )
        session.execute(delete(TaskRow).where(TaskRow.id.in_(ids)))
    return ids


def _move(session: Any, task_id: int, expected: TaskStatus, **values: Any) -> bool:
    values.setdefault("status", TaskStatus.RUNNING)
    values["status"] = TaskStatus(values["status"]).value
    result = session.execute(
        update(TaskRow).where(TaskRow.id == task_id, TaskRow.status == expected).values(**values)
    )
    return bool(result.rowcount == 1)


# -- outcomes ---------------------------------------------------------------------------------


def read_result(folder: TaskFolder) -> dict[str, Any] | None:
    """The supervisor's result (the last line of result.json), or None while there is none."""
    try:
        lines = folder.result.read_text(encoding="utf-8").splitlines()
        data = json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return None
    return data if isinstance(data, dict) else None


def outcome_from_result(
    folder: TaskFolder, result: Mapping[str, Any], spec: Mapping[str, Any]
) -> Outcome:
    """What the supervisor's result means for the task."""
    reason = result.get("reason")
    code, signum = result.get("exit_code"), result.get("signal")
    if reason == "killed":
        return Outcome(TaskStatus.KILLED, code, "killed on request")
    if reason == "timeout":
        return Outcome(TaskStatus.ERROR, code, f"timed out after {spec.get('timeout', 0):g} s")
    if reason == "start_failed":
        return Outcome(TaskStatus.ERROR, None, f"could not start: {result.get('error')}")
    if reason == "limit":
        return Outcome(TaskStatus.ERROR, code, _with_tail(str(result.get("error")), folder))
    if code != 0 and _out_of_space(folder, result):
        home = folder.root.parent.parent
        why = f"no space left on the disk of the data folder ({home}): the task could not write"
        return Outcome(TaskStatus.ERROR, code, _with_tail(why, folder))
    if signum:
        why = f"killed by signal {signum} ({_signal_name(signum)})"
        return Outcome(TaskStatus.ERROR, None, _with_tail(why, folder))
    if code != 0:
        return Outcome(TaskStatus.ERROR, code, _with_tail(f"exited with status {code}", folder))
    return _done(folder, spec.get("outputs"), spec.get("catalog"))


def _out_of_space(folder: TaskFolder, result: Mapping[str, Any]) -> bool:
    """True when a failed task died for lack of disk space, as far as can be told."""
    if result.get("disk_full"):
        return True
    # Python exits with 120 when flushing its output at exit fails (ENOSPC here, usually)
    tail = tail_text(folder.stderr, TAIL_BYTES)
    return "No space left on device" in tail or "[Errno 28]" in tail


def orphan_outcome(handle: Mapping[str, Any] | None, kill_requested: bool) -> Outcome:
    """A running task whose supervisor is gone without a result."""
    if kill_requested:
        return Outcome(TaskStatus.KILLED, None, "killed on request (its supervisor was gone)")
    if not handle:
        return Outcome(TaskStatus.ERROR, None, "the task never started: its supervisor is gone")
    pid = handle.get("pid")
    return Outcome(
        TaskStatus.ERROR, None, f"supervisor died (pid {pid}) without recording how the task ended"
    )


def _done(
    folder: TaskFolder, declared: list[str] | None, catalog: Mapping[str, Any] | None = None
) -> Outcome:
    files = scan_outputs(folder.output)
    if declared:
        by_name = {f["name"]: f for f in files}
        missing = [name for name in declared if name not in by_name]
        if missing:
            message = "declared output file(s) missing: " + ", ".join(missing)
            return Outcome(TaskStatus.ERROR, 0, message, files)
        files = [by_name[name] for name in declared]
    if catalog:
        # AMDA's header is written where the task ran (SPEC §8); sizes change with it
        problem = catalogs.finish_outputs(folder.output, [f["name"] for f in files], catalog)
        files = _restat(folder.output, files)
        if problem:
            return Outcome(TaskStatus.ERROR, 0, problem, files)
    return Outcome(TaskStatus.DONE, 0, None, files)


def _restat(root: Path, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {f["name"]: f for f in scan_outputs(root)}
    return [by_name.get(f["name"], f) for f in files]


def scan_outputs(root: Path) -> list[dict[str, Any]]:
    """Regular files inside ``root`` (real paths checked), with names relative to it."""
    try:
        base = root.resolve(strict=True)
    except OSError:
        return []
    found: list[dict[str, Any]] = []
    _scan(base, base, found)
    return sorted(found, key=lambda f: f["name"])


def _scan(base: Path, folder: Path, found: list[dict[str, Any]]) -> None:
    # only links need resolving: anything else below the resolved base is inside it
    with os.scandir(folder) as entries:
        for entry in entries:
            path = folder / entry.name
            if entry.is_symlink():
                real = path.resolve()
                if base in real.parents and real.is_file():  # links to folders are not followed
                    found.append(_output_entry(base, path, real.stat().st_size))
            elif entry.is_dir(follow_symlinks=False):
                _scan(base, path, found)
            elif entry.is_file(follow_symlinks=False):
                found.append(_output_entry(base, path, entry.stat(follow_symlinks=False).st_size))


def _output_entry(base: Path, path: Path, size: int) -> dict[str, Any]:
    return {"name": path.relative_to(base).as_posix(), "size": size}


def tail_text(path: Path, max_bytes: int) -> str:
    """The end of a text file, at most ``max_bytes`` of it, never loading the whole file."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def stderr_tail(folder: TaskFolder) -> str:
    """The last lines of the task's standard error, where the reason for a failure usually is."""
    lines = tail_text(folder.stderr, TAIL_BYTES).strip().splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def _with_tail(message: str, folder: TaskFolder) -> str:
    tail = stderr_tail(folder)
    return f"{message}; standard error ends with:\n{tail}" if tail else message


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"
