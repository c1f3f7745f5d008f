"""Reading tasks: one by id, the filtered and paginated list, counts; as service records."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from orchestra.errors import InvalidInput, NotFound
from orchestra.limits import MAX_ID, MAX_PAGE
from orchestra.records import OutputFile, TaskInfo, TaskPage
from orchestra.storage.db import Database
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import TaskRecord
from orchestra.tasks.status import TaskStatus

_ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
_ID_BATCH = 500  # ids per "IN (…)" list: well below every database's limit on parameters
# a listed task's columns: the run specification and the handle are not shown, so not read
_LISTED = [
    c
    for c in TaskRow.__table__.columns  # type: ignore[attr-defined]
    if c.name not in ("spec", "handle", "reuse_key")
]
STATUSES = frozenset(s.value for s in TaskStatus)


def check_id(task_id: Any) -> int:
    """A task id that can exist (a positive 63-bit integer); NotFound otherwise."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 < task_id <= MAX_ID:
        raise NotFound(f"no task {task_id}")
    return task_id


def row(db: Database, task_id: int) -> TaskRecord:
    """The task's row; NotFound for an impossible or unknown id."""
    check_id(task_id)
    found = lifecycle.read(db, task_id)
    if found is None:
        raise NotFound(f"no task {task_id}")
    return found


def info(found: TaskRecord) -> TaskInfo:
    """The service's record of a task row."""
    output = None
    if found.output is not None:
        output = tuple(OutputFile(str(f["name"]), int(f["size"])) for f in found.output)
    return TaskInfo(
        id=found.id, module=found.module_id, args=dict(found.args or {}), status=found.status,
        created=found.created, started=found.started, finished=found.finished,
        exit_code=found.exit_code, error=found.error, output=output, worker=found.worker,
        submitted_by=found.submitted_by, user=found.user,
        kind=found.kind, model=_model(found),
        reused_from=found.reused_from, start=found.start,
    )  # fmt: skip


def _model(found: TaskRecord) -> dict[str, Any] | None:
    if found.model_version is None:
        return None
    return {"version": found.model_version, "digest": found.model_digest}


def page(
    db: Database,
    *,
    status: str | None = None,
    module: int | None = None,
    limit: int = 50,
    offset: int = 0,
    cursor: str | None = None,
    who: tuple[str | None, str | None] = (None, None),
) -> TaskPage:
    """Tasks newest first, filtered (``who``: submitted by, user); pages by offset or cursor."""
    conditions = _filters(status, module)
    submitted_by, user = who
    if submitted_by is not None:
        conditions.append(TaskRow.submitted_by == submitted_by)
    if user is not None:
        conditions.append(TaskRow.user == user)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: {limit} is not between 1 and {MAX_PAGE}", key="limit")
    if offset < 0:
        raise InvalidInput(f"offset: {offset} must not be negative", key="offset")
    ids_query = select(TaskRow.id).where(*conditions).order_by(TaskRow.id.desc()).limit(limit + 1)
    if cursor:
        ids_query = ids_query.where(TaskRow.id < decode_cursor(cursor))
    else:
        ids_query = ids_query.offset(offset)
    with db.connect() as connection:
        count = select(func.count()).select_from(TaskRow).where(*conditions)
        total = connection.execute(count).scalar() or 0
        # ids first, from an index alone: skipping deep into the list then never reads the
        # rows it skips (each carries its run specification), only the page's own
        ids = list(connection.execute(ids_query).scalars())
        wanted = ids[:limit]
        rows = connection.execute(
            select(*_LISTED).where(TaskRow.id.in_(wanted)).order_by(TaskRow.id.desc())
        )
        tasks = tuple(info(lifecycle.record(r)) for r in rows)
    next_cursor = encode_cursor(wanted[-1]) if len(ids) > limit else None
    return TaskPage(tasks, total, limit, 0 if cursor else offset, next_cursor)


def counts(db: Database) -> dict[str, int]:
    """How many tasks are in each status."""
    with db.connect() as connection:
        pairs = connection.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status))
        found = {status: count for status, count in pairs}
    return {s.value: int(found.get(s.value, 0)) for s in TaskStatus}


def queued_by_submitter(db: Database) -> list[tuple[str, str | None, int]]:
    """How many tasks each submitter (token name, user) has waiting."""
    query = (
        select(TaskRow.submitted_by, TaskRow.user, func.count())
        .where(TaskRow.status == TaskStatus.QUEUED.value)
        .group_by(TaskRow.submitted_by, TaskRow.user)
    )
    with db.connect() as connection:
        return [(str(name), user, int(count)) for name, user, count in connection.execute(query)]


def unsettled(db: Database, task_ids: Iterable[int]) -> dict[int, str]:
    """Which of ``task_ids`` are still queued or running, with that status (unknown: not)."""
    ids = sorted(set(task_ids))
    found: dict[int, str] = {}
    for start in range(0, len(ids), _ID_BATCH):
        query = select(TaskRow.id, TaskRow.status).where(
            TaskRow.id.in_(ids[start : start + _ID_BATCH]), TaskRow.status.in_(_ACTIVE)
        )
        with db.connect() as connection:
            found.update((int(i), str(status)) for i, status in connection.execute(query))
    return found


def starts(db: Database) -> dict[str, int]:
    """How many tasks started warm, started cold, or were answered from an earlier one."""
    kind = TaskRow.start
    with db.connect() as connection:
        pairs = connection.execute(
            select(kind, func.count()).where(kind.is_not(None)).group_by(kind)
        ).all()
        reused = connection.execute(
            select(func.count()).select_from(TaskRow).where(TaskRow.reused_from.is_not(None))
        ).scalar()
    found = {str(name): int(count) for name, count in pairs}
    return {"warm": found.get("warm", 0), "cold": found.get("cold", 0), "reused": int(reused or 0)}


def of_module(db: Database, module_id: int, *, active_only: bool = False) -> list[int]:
    """Ids of the module's tasks (only the queued and running ones with ``active_only``)."""
    query = select(TaskRow.id).where(TaskRow.module_id == module_id)
    if active_only:
        query = query.where(TaskRow.status.in_(_ACTIVE))
    with db.connect() as connection:
        return list(connection.execute(query).scalars())


def _filters(status: str | None, module: int | None) -> list[Any]:
    conditions: list[Any] = []
    if status is not None:
        if status not in STATUSES:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise InvalidInput(f"status: {status[:100]!r} is not one of {allowed}", key="status")
        conditions.append(TaskRow.status == status)
    if module is not None:
        if isinstance(module, bool) or not isinstance(module, int) or not 0 < module <= MAX_ID:
            raise InvalidInput(f"module: {module!r} is not a module id", key="module")
        conditions.append(TaskRow.module_id == module)
    return conditions


def encode_cursor(task_id: int) -> str:
    """An opaque cursor continuing a newest-first list after ``task_id``."""
    return base64.urlsafe_b64encode(f"before:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor from ``encode_cursor`` continues after; InvalidInput otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        value = int(number)
        if prefix != "before" or not 0 < value <= MAX_ID + 1:
            raise ValueError(raw)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor: not a cursor this list gave out", key="cursor") from None
    return value
