"""The only code that writes a task's status: one write transaction per move.

Every move is a conditional UPDATE (``WHERE status = <expected>``), so when two observers
(the exit watcher, the sweep, another server, a worker) settle the same task only one wins.
The functions here return what happened; the caller runs side effects after the commit.

Claims under ``max_running`` (the local executor's limit) are serialised across processes:
SQLite by its write lock (``BEGIN IMMEDIATE``), PostgreSQL by a transaction-level advisory
lock taken before the count. READ COMMITTED alone lets two transactions both count a free
slot (PITFALLS #17); row locks (``FOR UPDATE SKIP LOCKED``) would keep two claims off one row
but not the count of the others. The lock is held for one short transaction per claim.

Which queued task a claim takes is fair share's choice (``fairest``): the oldest
of the submitter with the fewest tasks running, ties to the one whose last task started
longest ago. A remote worker's claim (``claim_fairest``) picks in a plain query, locks the
row it named with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and picks again when another
claim has it; its conditional UPDATE is re-checked against the committed row anyway, so of
two claims of one row one changes nothing.

The moves on a task's hot path use prepared Core statements on a plain connection: an ORM
session costs several times more per transaction, and the server runs these for every task.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    Connection,
    Insert,
    Table,
    Text,
    Update,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    select,
    text,
)
from sqlalchemy import update as sql_update

from orchestra.access import audit
from orchestra.errors import TooManyRequests
from orchestra.storage.db import Database
from orchestra.storage.tables import ModuleRow, TaskRow, now
from orchestra.tasks.status import FINAL, Outcome, TaskStatus

_LOGGER = logging.getLogger(__name__)

# prepared once: each execution reuses the compiled form from the engine's cache
_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]
_COLUMNS = _TASKS.c
_RUNNING = TaskStatus.RUNNING.value
# how a task's interpreter started: known once it has started, so a claim
# leaves it empty and the task's end writes it; a server says it of its own tasks meanwhile
COLD, WARM = "cold", "warm"
_QUEUED = TaskStatus.QUEUED.value
_INSERT = insert(_TASKS)
_SET_SPEC = (
    sql_update(_TASKS)
    .where(_COLUMNS.id == bindparam("task_id"))
    .values(spec=bindparam("new_spec"), status=bindparam("new_status"),
            started=bindparam("new_started"), worker=bindparam("new_worker"),
            start=bindparam("new_start"))
)  # fmt: skip
_NEW_ID = select(func.nextval(func.pg_get_serial_sequence("tasks", "id")).label("id")).cte()
_NEW_COLUMNS = (
    "module_id", "status", "args", "created", "timeout", "install_dir", "executor",
    "kill_requested", "started", "worker", "submitted_by", "user", "submitter", "queue", "kind",
    "model_version", "model_digest", "reuse_key",
)  # fmt: skip
_ID_STAND_IN = -4_611_686_018_427_387_903  # the id in a spec built before the id is drawn
_SPEC_ID = bindparam("id_path", type_=ARRAY(Text))  # the key of the spec that holds the id


@functools.cache
def _pg_inserts() -> tuple[Insert, Insert]:
    """PostgreSQL only: the insert and its spec in one statement, the id drawn from the
    sequence; and the same, written only while the module is installed in the generation
    the spec names. Built on first use: PostgreSQL's dialect takes 20 ms to import, which
    every command on SQLite would pay.
    """
    from sqlalchemy.dialects.postgresql import JSONB

    new_row = select(
        _NEW_ID.c.id,
        *(bindparam(name, type_=_COLUMNS[name].type) for name in _NEW_COLUMNS),
        cast(
            func.jsonb_set(cast(bindparam("spec", type_=JSON), JSONB), _SPEC_ID,
                           func.to_jsonb(_NEW_ID.c.id)),
            JSON,
        ),
    )  # fmt: skip
    installed_as_said = exists().where(
        ModuleRow.id == bindparam("module_id"), ModuleRow.status == bindparam("installed"),
        ModuleRow.install_dir == bindparam("install_dir"),
    )  # fmt: skip
    columns = ["id", *_NEW_COLUMNS, "spec"]
    return (
        insert(_TASKS).from_select(columns, new_row).returning(_COLUMNS.id),
        insert(_TASKS)
        .from_select(columns, new_row.where(installed_as_said))
        .returning(_COLUMNS.id),
    )


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
_STATUS = select(_COLUMNS.status, _COLUMNS.worker).where(_COLUMNS.id == bindparam("task_id"))
_ROW = select(_TASKS).where(_COLUMNS.id == bindparam("task_id"))
_QUEUED_OF = (
    select(func.count())
    .select_from(_TASKS)
    .where(_COLUMNS.status == _QUEUED, _COLUMNS.submitter == bindparam("submitter"))
)
QUOTA_RETRY_AFTER = 5  # seconds a submitter over its quota is told to wait
# an arbitrary key ("slots"): the lock that serialises claims under max_running on PostgreSQL
_SLOT_LOCK = text(f"SELECT pg_advisory_xact_lock({0x736C6F7473})")
# one submitter's count-then-insert at a time (PITFALLS 17): keyed by the submitter's name
_QUOTA_LOCK = text(f"SELECT pg_advisory_xact_lock({0x71756F74}, hashtext(:submitter))")


class _Move:
    """A conditional UPDATE of one task, with its RETURNING form where the database has one."""

    def __init__(self, statement: Update) -> None:
        self.plain = statement
        self.returning = statement.returning(*_COLUMNS)

    def apply(
        self, connection: Connection, task_id: int, values: Mapping[str, Any]
    ) -> TaskRecord | None:
        """The task's row after the move; None when its condition matched nothing."""
        params = {"task_id": task_id, **values}
        # SQLite 3.35+ and PostgreSQL answer with the changed row: no second read
        if connection.dialect.update_returning:
            return _record(connection.execute(self.returning, params).first())
        if connection.execute(self.plain, params).rowcount != 1:
            return None
        return _read(connection, task_id)


_CLAIM = _Move(
    sql_update(_TASKS)
    .where(_COLUMNS.id == bindparam("task_id"), _COLUMNS.status == _QUEUED,
           _COLUMNS.kill_requested.is_(False))
    .values(status=_RUNNING, started=bindparam("now"), worker=bindparam("worker"),
            heartbeat=bindparam("heartbeat"), start=None)
)  # fmt: skip
_NOTIFY = text("SELECT pg_notify(:channel, :task)")
_FINISH_CONDITION = (_COLUMNS.id == bindparam("task_id"), _COLUMNS.status == _RUNNING)
_FINISH_VALUES: dict[str, Any] = {
    "status": bindparam("new_status"), "finished": bindparam("now"),
    "exit_code": bindparam("new_exit_code"), "error": bindparam("new_error"),
    "output": bindparam("new_output"),
    "start": func.coalesce(bindparam("new_start"), _COLUMNS.start),
}  # fmt: skip
_FINISH = _Move(sql_update(_TASKS).where(*_FINISH_CONDITION).values(**_FINISH_VALUES))
# a worker's result counts only while the task is still its own: a late one changes nothing
_FINISH_MINE = _Move(
    sql_update(_TASKS)
    .where(*_FINISH_CONDITION, _COLUMNS.worker == bindparam("me"))
    .values(**_FINISH_VALUES)
)
_SETTLE_LOST = _Move(
    sql_update(_TASKS)
    .where(*_FINISH_CONDITION, _COLUMNS.heartbeat < bindparam("cutoff"))
    .values(status=TaskStatus.ERROR.value, finished=bindparam("now"), error=bindparam("reason"))
)
_STALE = select(_COLUMNS.id, _COLUMNS.worker).where(
    _COLUMNS.status == _RUNNING, _COLUMNS.heartbeat < bindparam("cutoff")
)


@dataclass(slots=True)
class TaskRecord:
    """A task's row as read, built by column name.

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
    worker: str | None = None
    heartbeat: datetime | None = None
    submitted_by: str = "local"
    user: str | None = None
    submitter: str = "local"
    queue: str = "default"
    kind: str = "run"
    model_version: int | None = None
    model_digest: str | None = None
    reuse_key: str | None = None
    reused_from: int | None = None
    start: str | None = None


def record(found: Any) -> TaskRecord:
    """A Core row holding some of the tasks table's columns, as a TaskRecord."""
    return TaskRecord(**found._mapping)


def _record(found: Any) -> TaskRecord | None:
    return None if found is None else record(found)


def _lock_slots(connection: Connection) -> None:
    """Serialise the count-then-claim of concurrent claims (SQLite's write lock already does)."""
    if connection.dialect.name == "postgresql":
        connection.execute(_SLOT_LOCK)


# -- creating and claiming --------------------------------------------------------------------


class ModuleChanged(Exception):
    """A task's module is no longer installed as its submission read it: read it again."""


@dataclass(frozen=True)
class NewTask:
    """What ``create`` inserts; ``build_spec(task_id)`` gives what the executor will run."""

    module_id: int
    args: Mapping[str, str]
    timeout: float
    install_dir: str | None
    build_spec: Callable[[int], dict[str, Any]]
    executor: str = "local"
    submitted_by: str = "local"  # who asked: the token's name
    user: str | None = None  # the end user it asked for
    queue: str = "default"  # the queue workers take it from
    max_queued: int = 0  # the submitter's queued tasks allowed (0: no limit)
    kind: str = "run"  # run or train
    model: tuple[int, str] | None = None  # the model version a run was given: number, digest
    reuse_key: str | None = None  # set for a deterministic module's task (tasks.reuse)
    # inserted only while its module is installed in ``install_dir`` (checked by the insert)
    if_installed: bool = False

    @property
    def submitter(self) -> str:
        """The key fair share groups by: the token's name, with its user when given."""
        return self.submitted_by if self.user is None else f"{self.submitted_by}/{self.user}"


def create(
    db: Database, new: NewTask, *, max_running: int | None = None, worker: str | None = None
) -> tuple[TaskRecord, bool]:
    """Insert a task, queued; claimed for ``worker`` at once when ``max_running`` allows.

    With ``max_running``, the task is claimed (running) in the same transaction when a slot
    is free and no older task waits. Also says whether a slot was free (when it was but the
    task is queued, older tasks wait for a dispatch).
    """
    values: dict[str, Any] = {
        "module_id": new.module_id, "status": _QUEUED, "args": dict(new.args),
        "created": now(), "timeout": new.timeout, "install_dir": new.install_dir,
        "executor": new.executor, "kill_requested": False, "started": None, "worker": None,
        "submitted_by": new.submitted_by, "user": new.user, "submitter": new.submitter,
        "queue": new.queue,
        "kind": new.kind, "model_version": new.model[0] if new.model else None,
        "model_digest": new.model[1] if new.model else None,
        "reuse_key": new.reuse_key,
    }  # fmt: skip
    slot_free = max_running is None
    with db.begin_write() as connection:
        if max_running is not None:
            _lock_slots(connection)
        if new.max_queued:
            _check_quota(connection, new)
        if max_running is None and connection.dialect.name == "postgresql":
            inserted_whole = _insert_with_spec(connection, new, values)
            if inserted_whole is not None:
                return inserted_whole, slot_free
        # the insert assigns the id that the spec needs
        inserted = connection.execute(_INSERT, values).inserted_primary_key
        assert inserted is not None
        task_id = int(inserted[0])
        values["spec"] = new.build_spec(task_id)
        if max_running is not None:
            running, older = connection.execute(_SLOTS_BEFORE, {"task_id": task_id}).one()
            slot_free = int(running or 0) < max_running
            if slot_free and older is None:
                values.update(status=_RUNNING, started=values["created"], worker=worker)
        connection.execute(
            _SET_SPEC,
            {"task_id": task_id, "new_spec": values["spec"], "new_status": values["status"],
             "new_started": values["started"], "new_worker": values["worker"],
             "new_start": values.get("start")},
        )  # fmt: skip
    return TaskRecord(id=task_id, **values), slot_free


def _insert_with_spec(
    connection: Connection, new: NewTask, values: dict[str, Any]
) -> TaskRecord | None:
    """A queued task in one statement: PostgreSQL draws the id and writes it into the spec.

    None (nothing written) when the spec holds its id elsewhere than at one top-level key.
    ModuleChanged when ``new.if_installed`` and its module is not installed as it says.
    """
    spec = new.build_spec(_ID_STAND_IN)
    keys = [key for key, value in spec.items() if value == _ID_STAND_IN]
    if len(keys) != 1 or json.dumps(spec).count(str(_ID_STAND_IN)) != 1:
        if new.if_installed:
            raise ModuleChanged(new.module_id)  # checked by the caller, not by this insert
        return None
    plain, if_installed = _pg_inserts()
    statement = if_installed if new.if_installed else plain
    from orchestra.registry.rows import INSTALLED  # the registry imports this module

    params = {**values, "spec": spec, "id_path": keys, "installed": INSTALLED}
    task_id = connection.execute(statement, params).scalar_one_or_none()
    if task_id is None:
        raise ModuleChanged(new.module_id)
    return TaskRecord(id=int(task_id), **values, spec={**spec, keys[0]: int(task_id)})


def _check_quota(connection: Connection, new: NewTask) -> None:
    """TooManyRequests when the submitter already has ``max_queued`` tasks waiting."""
    if connection.dialect.name == "postgresql":  # SQLite's write lock already serialises
        connection.execute(_QUOTA_LOCK, {"submitter": new.submitter})
    waiting = connection.execute(_QUEUED_OF, {"submitter": new.submitter}).scalar() or 0
    if waiting >= new.max_queued:
        raise TooManyRequests(
            f"{new.submitter} has {waiting} tasks queued, the most allowed "
            f"(ORCHESTRA_MAX_QUEUED_PER_SUBMITTER={new.max_queued}): try again later",
            retry_after=QUOTA_RETRY_AFTER,
        )


def create_reused(
    db: Database, new: NewTask, source: TaskRecord, share: Callable[[int], None]
) -> TaskRecord:
    """Insert a task done at once with ``source``'s outputs, which ``share(task_id)`` links.

    The files are shared inside the insert's transaction: if that fails, no row remains.
    """
    moment = now()
    values: dict[str, Any] = {
        "module_id": new.module_id, "status": TaskStatus.DONE.value, "args": dict(new.args),
        "created": moment, "started": moment, "finished": moment, "exit_code": 0,
        "output": source.output, "timeout": new.timeout, "install_dir": new.install_dir,
        "executor": new.executor, "kill_requested": False, "reuse_key": new.reuse_key,
        "reused_from": source.id, "worker": None, "start": None,
        "submitted_by": new.submitted_by, "user": new.user, "submitter": new.submitter,
        "queue": new.queue, "kind": new.kind,
        "model_version": new.model[0] if new.model else None,
        "model_digest": new.model[1] if new.model else None,
    }  # fmt: skip
    with db.begin_write() as connection:
        inserted = connection.execute(_INSERT, values).inserted_primary_key
        assert inserted is not None
        task_id = int(inserted[0])
        share(task_id)
    return TaskRecord(id=task_id, **values)


def _next_claim(connection: Connection, max_running: int) -> int | None:
    """The fairest queued task's id when a slot is free, else None."""
    running, oldest = connection.execute(_SLOTS).one()
    if oldest is None or int(running or 0) >= max_running:
        return None
    return fairest(connection)


def fairest(connection: Connection, queue: str | None = None) -> int | None:
    """The queued task (of ``queue``, or any) that fair share starts next.

    The oldest queued task of the submitter with the fewest tasks running, ties going to
    the submitter whose last task started longest ago (one that never started one first).
    A plain query: PostgreSQL refuses FOR UPDATE with it (PITFALLS #25); the caller locks
    the row it names, and picks again when another claim took it.
    """
    picked = connection.execute(_FAIREST[queue is not None], {"queue": queue}).first()
    return None if picked is None else int(picked[0])


def _fair_pick(in_queue: bool) -> Any:
    """The fair-share pick, each step an index lookup.

    The distinct submitters with queued tasks are found by skipping through the index on
    (status, [queue,] submitter, id), one lookup per submitter, instead of reading every
    queued row; then each one's oldest queued task, running count and last start.
    """

    def waiting(table: str) -> str:
        queue = f" AND {table}.queue = :queue" if in_queue else ""
        return f"{table}.status = 'queued'{queue}"

    # no input is formatted in: the two forms are fixed here, values are bound. Each lookup
    # is spelled ORDER BY … LIMIT 1 rather than MIN/MAX, so that the planner walks the index
    # whatever its statistics say (PostgreSQL otherwise may aggregate a whole range)
    return text(f"""
        WITH RECURSIVE subs(submitter) AS (
            SELECT (SELECT t.submitter FROM tasks t WHERE {waiting("t")}
                    ORDER BY t.submitter LIMIT 1)
            UNION ALL
            SELECT (SELECT t.submitter FROM tasks t
                    WHERE {waiting("t")} AND t.submitter > subs.submitter
                    ORDER BY t.submitter LIMIT 1)
            FROM subs WHERE subs.submitter IS NOT NULL
        )
        SELECT first_id FROM (
            SELECT
                (SELECT t.id FROM tasks t WHERE {waiting("t")} AND t.submitter = subs.submitter
                 ORDER BY t.id LIMIT 1) AS first_id,
                (SELECT COUNT(*) FROM tasks t
                 WHERE t.status = 'running' AND t.submitter = subs.submitter) AS running,
                (SELECT t.started FROM tasks t
                 WHERE t.submitter = subs.submitter AND t.started IS NOT NULL
                 ORDER BY t.started DESC LIMIT 1) AS last_start
            FROM subs WHERE subs.submitter IS NOT NULL
        ) AS candidates
        ORDER BY running, CASE WHEN last_start IS NULL THEN 0 ELSE 1 END, last_start, first_id
        LIMIT 1
    """)


_FAIREST = {False: _fair_pick(False), True: _fair_pick(True)}
_LOCK_QUEUED = text(
    "SELECT id FROM tasks WHERE id = :task_id AND status = 'queued' FOR UPDATE SKIP LOCKED"
)
CLAIM_TRIES = 20  # picks a worker's claim makes while other claims take its candidates


def claim_fairest(db: Database, worker: str, queue: str) -> TaskRecord | None:
    """Move the fairest queued task of ``queue`` to running for ``worker``; None if none waits.

    A worker's message only wakes it: which task it runs is fair share's choice, so that a
    client that queued a thousand tasks holds back another's single task by at most one
    task's end, whatever order the broker delivers in.
    """
    moment = now()
    with db.begin_write() as connection:
        postgres = connection.dialect.name == "postgresql"
        for _ in range(CLAIM_TRIES):
            task_id = fairest(connection, queue)
            if task_id is None:
                return None
            if postgres and connection.execute(_LOCK_QUEUED, {"task_id": task_id}).first() is None:
                continue  # taken (or being taken) by another claim: pick again
            row = _CLAIM.apply(
                connection, task_id, {"now": moment, "worker": worker, "heartbeat": moment}
            )
            if row is not None:
                return row
    return None


def may_claim(db: Database, max_running: int) -> bool:
    """True when a task waits and a slot looks free: a cheap read before a claim."""
    with db.connect() as connection:
        return _next_claim(connection, max_running) is not None


def claim_next(db: Database, max_running: int, worker: str | None = None) -> TaskRecord | None:
    """Move the oldest queued task to running when fewer than ``max_running`` run."""
    with db.begin_write() as connection:
        return _claim_next(connection, max_running, worker)


def _claim_next(connection: Connection, max_running: int, worker: str | None) -> TaskRecord | None:
    _lock_slots(connection)
    task_id = _next_claim(connection, max_running)
    if task_id is None:
        return None
    return _CLAIM.apply(connection, task_id, {"now": now(), "worker": worker, "heartbeat": None})


def claim(db: Database, task_id: int, worker: str) -> TaskRecord | None:
    """Move one given queued task to running for ``worker``, its lease starting now.

    None when the task is not queued any more (claimed by another, killed, gone): then the
    caller must not run it.
    """
    moment = now()
    with db.begin_write() as connection:
        return _CLAIM.apply(connection, task_id, {"now": moment, "worker": worker,
                                                  "heartbeat": moment})  # fmt: skip


# -- reading ----------------------------------------------------------------------------------


def read(db: Database, task_id: int) -> TaskRecord | None:
    """One task row (read in a short transaction), or None."""
    with db.connect() as connection:
        return _read(connection, task_id)


def status_of(db: Database, task_id: int) -> tuple[str, str | None] | None:
    """A task's status and worker (two columns: the row's JSON is not read), or None."""
    with db.connect() as connection:
        found = connection.execute(_STATUS, {"task_id": task_id}).first()
    return None if found is None else (str(found[0]), found[1])


def _read(connection: Connection, task_id: int) -> TaskRecord | None:
    return _record(connection.execute(_ROW, {"task_id": task_id}).first())


# -- ending -----------------------------------------------------------------------------------


def request_kill(db: Database, task_id: int, *, by: str | None = None) -> TaskStatus | None:
    """Drop a queued task (killed) or flag a running one; the status found before the move.

    ``by``: who asks; a kill by someone other than the task's submitter is audited with it.
    """
    with db.write() as session:
        found = session.execute(
            select(TaskRow.status, TaskRow.submitted_by).where(TaskRow.id == task_id)
        ).first()
        if found is None:
            return None
        status, submitted_by = found
        if by is not None and by != submitted_by and status in (_QUEUED, _RUNNING):
            audit.record(session, by, "task.kill", f"task {task_id}", audit.OK,
                         f"submitted by {submitted_by}; it was {status}")  # fmt: skip
        if status == TaskStatus.QUEUED:
            _move(
                session, task_id, TaskStatus.QUEUED, status=TaskStatus.KILLED, finished=now(),
                error="killed before it started",
            )  # fmt: skip
        elif status == TaskStatus.RUNNING:
            session.execute(
                sql_update(TaskRow).where(TaskRow.id == task_id).values(kill_requested=True)
            )
        return TaskStatus(status)


def finish(
    db: Database,
    task_id: int,
    outcome: Outcome,
    *,
    worker: str | None = None,
    announce: str | None = None,
) -> TaskRecord | None:
    """Move a running task to its final state; its final row, None if it was not to be had.

    With ``worker``, only while the task still runs under that worker's name, so that a
    result arriving after the task was settled (lost, killed) never revives it. With
    ``announce``, PostgreSQL also notifies that channel of the task's id once it commits.
    """
    with db.begin_write() as connection:
        final = _finish(connection, task_id, outcome, worker)
        if final is not None and announce and connection.dialect.name == "postgresql":
            connection.execute(_NOTIFY, {"channel": announce, "task": str(task_id)})
        return final


def finish_and_claim(
    db: Database, task_id: int, outcome: Outcome, max_running: int, worker: str | None = None
) -> tuple[TaskRecord | None, TaskRecord | None]:
    """``finish``, then claim the oldest queued task in the same transaction when it won."""
    with db.begin_write() as connection:
        final = _finish(connection, task_id, outcome, None)
        if final is None:
            return None, None
        return final, _claim_next(connection, max_running, worker)


def _finish(
    connection: Connection, task_id: int, outcome: Outcome, worker: str | None
) -> TaskRecord | None:
    values = {
        "now": now(), "new_status": TaskStatus(outcome.status).value,
        "new_exit_code": outcome.exit_code, "new_error": outcome.error,
        "new_output": outcome.output, "new_start": outcome.start,
    }  # fmt: skip
    if worker is None:
        return _FINISH.apply(connection, task_id, values)
    return _FINISH_MINE.apply(connection, task_id, {**values, "me": worker})


def settle_lost(db: Database, lease: float) -> list[TaskRecord]:
    """End in error every running task whose lease was not renewed for ``lease`` seconds."""
    cutoff = now() - timedelta(seconds=lease)
    # a read first: every sweep asks, and the write lock is taken only when one is stale
    with db.connect() as connection:
        stale = connection.execute(_STALE, {"cutoff": cutoff}).all()
    settled: list[TaskRecord] = []
    if not stale:
        return settled
    with db.begin_write() as connection:
        for task_id, worker in stale:
            reason = f"worker {worker} lost: no heartbeat for {lease:g} s"
            values = {"cutoff": cutoff, "now": now(), "reason": reason}
            final = _SETTLE_LOST.apply(connection, task_id, values)
            if final is not None:
                settled.append(final)
    for final in settled:
        _LOGGER.warning("task %s: %s", final.id, final.error)
    return settled


def delete_final(
    db: Database,
    task_ids: list[int],
    *,
    by: str | None = None,
    note: Callable[[Any, list[int]], None] | None = None,
) -> list[int]:
    """Delete the rows among ``task_ids`` that are final; the ids deleted.

    ``by``: who asks; deleting someone else's task is audited with it. ``note(session,
    ids)`` runs in the same transaction once the ids are known (a prune's audit entry).
    """
    if not task_ids:
        return []
    with db.write() as session:
        final = [s.value for s in FINAL]
        rows = session.execute(
            select(TaskRow.id, TaskRow.submitted_by).where(
                TaskRow.id.in_(task_ids), TaskRow.status.in_(final)
            )
        ).all()
        for task_id, submitted_by in rows:
            if by is not None and by != submitted_by:
                audit.record(session, by, "task.delete", f"task {task_id}", audit.OK,
                             f"submitted by {submitted_by}")  # fmt: skip
        ids = [task_id for task_id, _ in rows]
        session.execute(delete(TaskRow).where(TaskRow.id.in_(ids)))
        if note is not None and ids:
            note(session, ids)
    return ids


def _move(session: Any, task_id: int, expected: TaskStatus, **values: Any) -> bool:
    values["status"] = TaskStatus(values["status"]).value
    result = session.execute(
        sql_update(TaskRow)
        .where(TaskRow.id == task_id, TaskRow.status == expected)
        .values(**values)
    )
    return bool(result.rowcount == 1)
