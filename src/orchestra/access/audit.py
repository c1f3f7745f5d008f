"""The audit log: append-only, written in the transaction of the change it records.

Other parts record through ``record(connection_or_session, …)`` inside their own write
transaction, so that an entry exists exactly when its change does. A change that failed (its
transaction rolled back) or was refused records that through ``record_now``, in a
transaction of its own.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, insert, select

from orchestra.errors import InvalidInput
from orchestra.limits import MAX_PAGE
from orchestra.records import AuditEntry, AuditPage
from orchestra.storage.tables import AuditRow, now

if TYPE_CHECKING:
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
OK, REFUSED, FAILED = "ok", "refused", "failed"
OUTCOMES = (OK, REFUSED, FAILED)
_AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
_INSERT = insert(_AUDIT)
_DETAIL_MAX = 2000  # characters of detail kept (an installer's message can be long)


def record(
    executor: Any, who: str, action: str, obj: str, outcome: str = OK, detail: str = ""
) -> None:
    """Append one entry through ``executor`` (a Session or Connection in a write transaction)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r}")
    executor.execute(
        _INSERT,
        {"at": now(), "who": who[:64], "action": action[:64], "object": obj[:300],
         "outcome": outcome, "detail": detail[:_DETAIL_MAX]},
    )  # fmt: skip


def record_now(
    db: Database, who: str, action: str, obj: str, outcome: str, detail: str = ""
) -> None:
    """Append one entry in a transaction of its own (a failure, a refusal); never raises."""
    try:
        with db.begin_write() as connection:
            record(connection, who, action, obj, outcome, detail)
    except Exception as exc:  # the answer to the caller matters more than its trace here
        _LOGGER.warning("audit entry %s %s %s not written: %s", who, action, obj, exc)


def page(
    db: Database,
    *,
    who: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    cursor: str | None = None,
) -> AuditPage:
    """Entries newest first, filtered; paged by offset or cursor like the task list."""
    from orchestra.tasks.queries import decode_cursor, encode_cursor

    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: {limit} is not between 1 and {MAX_PAGE}", key="limit")
    if offset < 0:
        raise InvalidInput(f"offset: {offset} must not be negative", key="offset")
    query = select(_AUDIT).order_by(_AUDIT.c.id.desc()).limit(limit + 1)
    for column, value in ((_AUDIT.c.who, who), (_AUDIT.c.action, action)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(_AUDIT.c.at >= since)
    query = query.where(_AUDIT.c.id < decode_cursor(cursor)) if cursor else query.offset(offset)
    with db.connect() as connection:
        rows = connection.execute(query).all()
    entries = tuple(AuditEntry(**row._mapping) for row in rows[:limit])
    more = len(rows) > limit
    next_cursor = encode_cursor(entries[-1].id) if more and entries else None
    return AuditPage(entries, limit, 0 if cursor else offset, next_cursor)
