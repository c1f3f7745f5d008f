"""Model versions, aliases and their history in the database.

A version is made in one write transaction: its number taken from the module's counter
(never given twice), its row, its folder of links, and the ``default`` alias for a module's
first version (or a ``promote``). Deleting one checks, in the same transaction, that no alias
points at it and no queued or running task uses it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, cast, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestra.access import audit
from orchestra.access.caller import current
from orchestra.errors import InvalidInput, NotFound, WrongState
from orchestra.models.store import ModelStore, Stored
from orchestra.records import Aliases, AliasMove, ModelVersion
from orchestra.storage.db import Database
from orchestra.storage.tables import (
    AliasMoveRow,
    ModelAliasRow,
    ModelCounterRow,
    ModelVersionRow,
    TaskRow,
)
from orchestra.tasks.lifecycle import now
from orchestra.tasks.status import TaskStatus

_LOGGER = logging.getLogger(__name__)
_ATTEMPTS = 3  # tries to make a version when its counter's first row is raced for
DEFAULT = "default"
ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_VERSION = 2**31 - 1
_ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
# the listed columns: the file list (``contents``) can be long and is not shown in lists
_LISTED = [c for c in ModelVersionRow.__table__.columns if c.name != "contents"]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Made:
    """What a training's end asks for: the version's lineage besides its files."""

    module_id: int
    task_id: int
    generation: str | None
    commit: str | None
    args: Mapping[str, str]
    metrics: dict[str, Any] | None
    base: int | None
    promote: bool


def check_alias(name: str, key: str = "alias") -> str:
    """An alias name, or InvalidInput naming the rule."""
    if not isinstance(name, str) or not ALIAS.fullmatch(name):
        shown = str(name)[:100]
        raise InvalidInput(
            f"{key}: alias {shown!r} must be a lower-case letter then up to 31 of a-z, 0-9, "
            "'_', '-'",
            key=key,
        )
    return name


def _version_of(row: Any, aliases: tuple[str, ...]) -> ModelVersion:
    return ModelVersion(
        version=row.version, module=row.module_id, digest=row.digest, size=row.size,
        files=row.files, created=row.created, task=row.task_id, generation=row.generation,
        commit=row.commit, args=dict(row.args or {}), metrics=row.metrics, base=row.base,
        aliases=aliases, removed=bool(row.removed),
    )  # fmt: skip


def _aliases_by_version(session: Session, module_id: int) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = {}
    rows = session.execute(
        select(ModelAliasRow.name, ModelAliasRow.version)
        .where(ModelAliasRow.module_id == module_id)
        .order_by(ModelAliasRow.name)
    )
    for name, version in rows:
        found.setdefault(version, []).append(name)
    return {version: tuple(names) for version, names in found.items()}


# -- making -----------------------------------------------------------------------------------


def create(
    db: Database, store: ModelStore, made: Made, stored: Stored
) -> tuple[ModelVersion, bool]:
    """The version of a finished training (made once per task); whether this call made it.

    Two settlers of one task (the exit watcher and a sweep, or two servers) may race: the
    version's task is unique, so the one that loses finds the winner's version.
    """
    for attempt in range(_ATTEMPTS):
        try:
            return _create(db, store, made, stored)
        except IntegrityError:
            found = _made_for(db, made.task_id)
            if found is not None:
                return found, False
            if attempt + 1 == _ATTEMPTS:  # the counter's first row, raced for: try again
                raise
    raise AssertionError("unreachable")


def _made_for(db: Database, task_id: int) -> ModelVersion | None:
    with db.read() as session:
        row = session.scalar(select(ModelVersionRow).where(ModelVersionRow.task_id == task_id))
        return None if row is None else _version_of(row, ())


def _create(
    db: Database, store: ModelStore, made: Made, stored: Stored
) -> tuple[ModelVersion, bool]:
    with db.write() as session:
        existing = session.scalar(
            select(ModelVersionRow).where(ModelVersionRow.task_id == made.task_id)
        )
        if existing is not None:
            return _version_of(existing, ()), False
        number = _next_number(session, made.module_id)
        row = ModelVersionRow(
            module_id=made.module_id, version=number, digest=stored.digest, size=stored.size,
            files=len(stored.contents), contents=[list(e) for e in stored.contents],
            created=now(), task_id=made.task_id, generation=made.generation,
            commit=made.commit, args=dict(made.args), metrics=made.metrics, base=made.base,
            removed=False,
        )  # fmt: skip
        session.add(row)
        session.flush()
        by = f"task {made.task_id}"
        current = _alias_target(session, made.module_id, DEFAULT)
        if current is None or made.promote:
            _move(session, made.module_id, DEFAULT, number, by)
        # the folder last, inside the transaction: a failure leaves no row behind
        store.materialize(made.module_id, number, stored)
        version = _version_of(row, ())
    return version, True


def _next_number(session: Session, module_id: int) -> int:
    """The module's next version number, counted in the database (never given twice)."""
    # one UPDATE adding 1 in SQL: it locks the counter row, so concurrent trainings of a
    # module (on several servers) wait for each other instead of reading the same number
    bumped = session.execute(
        update(ModelCounterRow)
        .where(ModelCounterRow.module_id == module_id)
        .values(last=ModelCounterRow.last + 1)
    )
    if bumped.rowcount == 0:  # type: ignore[attr-defined]
        session.add(ModelCounterRow(module_id=module_id, last=1))
        session.flush()
        return 1
    return int(
        session.scalar(select(ModelCounterRow.last).where(ModelCounterRow.module_id == module_id))
        or 0
    )


# -- reading ----------------------------------------------------------------------------------


_LIST = (
    select(*_LISTED)
    .where(ModelVersionRow.module_id == bindparam("module_id"))
    .order_by(ModelVersionRow.version.desc())
)
_ALIASES = select(ModelAliasRow.name, ModelAliasRow.version).where(
    ModelAliasRow.module_id == bindparam("module_id")
)


_FINGERPRINT = select(
    select(
        func.count(), func.max(ModelVersionRow.id), func.sum(cast(ModelVersionRow.removed, Integer))
    )  # fmt: skip
    .where(ModelVersionRow.module_id == bindparam("module_id"))
    .subquery(),
    select(func.max(AliasMoveRow.id))
    .where(AliasMoveRow.module_id == bindparam("module_id"))
    .scalar_subquery(),
)


def fingerprint(db: Database, module_id: int) -> tuple[Any, ...]:
    """What changes whenever a module's version list does (versions are never edited)."""
    with db.connect() as connection:
        return tuple(connection.execute(_FINGERPRINT, {"module_id": module_id}).one())


def listing(db: Database, module_id: int) -> list[ModelVersion]:
    """A module's versions, newest first, with their aliases."""
    # a plain connection, not a session: a list may hold thousands of rows
    with db.connect() as connection:
        found: dict[int, list[str]] = {}
        for name, version in connection.execute(_ALIASES, {"module_id": module_id}):
            found.setdefault(version, []).append(name)
        rows = connection.execute(_LIST, {"module_id": module_id}).all()
    aliases = {version: tuple(sorted(names)) for version, names in found.items()}
    return [_version_of(row, aliases.get(row.version, ())) for row in rows]


def one(db: Database, module_id: int, number: int) -> tuple[ModelVersion, list[Any]]:
    """One version and its file list; NotFound when there is no such version."""
    with db.read() as session:
        row = _row(session, module_id, number)
        aliases = _aliases_by_version(session, module_id).get(number, ())
        return _version_of(row, aliases), list(row.contents)


def _row(session: Session, module_id: int, number: int) -> ModelVersionRow:
    row = None
    if 0 < number <= MAX_VERSION:
        row = session.scalar(
            select(ModelVersionRow).where(
                ModelVersionRow.module_id == module_id, ModelVersionRow.version == number
            )
        )
    if row is None:
        raise NotFound(f"module {module_id} has no model version {number}")
    return row


def made_by(db: Database, task_id: int) -> tuple[int, dict[str, Any] | None] | None:
    """The version a training task made (its number and final metrics), or None."""
    with db.read() as session:
        found = session.execute(
            select(ModelVersionRow.version, ModelVersionRow.metrics).where(
                ModelVersionRow.task_id == task_id
            )
        ).first()
    return None if found is None else (found[0], found[1])


def figures(db: Database) -> tuple[dict[str, int], dict[int, int]]:
    """Training tasks by status, and kept versions by module (for /metrics)."""
    with db.read() as session:
        trainings = session.execute(
            select(TaskRow.status, func.count()).where(TaskRow.kind == "train")
            .group_by(TaskRow.status)
        ).all()  # fmt: skip
        kept = session.execute(
            select(ModelVersionRow.module_id, func.count())
            .where(ModelVersionRow.removed.is_(False))
            .group_by(ModelVersionRow.module_id)
        ).all()
    return {str(s): int(n) for s, n in trainings}, {int(m): int(n) for m, n in kept}


@dataclass(frozen=True)
class Resolved:
    """The version a request names: its number, digest and the training that made it."""

    version: int
    digest: str
    task: int | None


_VERSION = ModelVersionRow.__table__.c  # type: ignore[attr-defined]
_BY_NUMBER = select(_VERSION.version, _VERSION.digest, _VERSION.task_id, _VERSION.removed).where(
    _VERSION.module_id == bindparam("module_id"), _VERSION.version == bindparam("number")
)
_BY_ALIAS = (
    select(_VERSION.version, _VERSION.digest, _VERSION.task_id, _VERSION.removed)
    .join(
        ModelAliasRow,
        (ModelAliasRow.module_id == _VERSION.module_id)
        & (ModelAliasRow.version == _VERSION.version),
    )  # fmt: skip
    .where(
        ModelAliasRow.module_id == bindparam("module_id"), ModelAliasRow.name == bindparam("name")
    )
)


def resolve(db: Database, module_id: int, ref: Any, key: str) -> Resolved | None:
    """A request's ``model`` or ``base`` (a number, ``@alias``, or None for ``default``).

    None when ``ref`` is None and there is no ``default``. One short read on a plain
    connection: every run of a trained module asks.
    """
    name, number = (DEFAULT, None) if ref is None else _parse_ref(ref, key)
    with db.connect() as connection:
        if name is not None:
            found = connection.execute(_BY_ALIAS, {"module_id": module_id, "name": name}).first()
        else:
            found = connection.execute(
                _BY_NUMBER, {"module_id": module_id, "number": number}
            ).first()
    if found is None:
        if ref is None:
            return None
        what = f"alias {name!r}" if name is not None else f"model version {number}"
        raise InvalidInput(f"{key}: module {module_id} has no {what}", key=key)
    if found.removed:
        raise InvalidInput(f"{key}: version {found.version}'s files are gone", key=key)
    return Resolved(found.version, found.digest, found.task_id)


def _parse_ref(ref: Any, key: str) -> tuple[str | None, int | None]:
    """``@name`` as (name, None), a number as (None, number); InvalidInput for anything else."""
    text = str(ref).strip() if not isinstance(ref, bool) else ""
    if text.startswith("@"):
        return check_alias(text[1:], key), None
    if text.isascii() and text.isdigit() and len(text) <= 10 and 0 < int(text) <= MAX_VERSION:
        return None, int(text)
    raise InvalidInput(
        f"{key}: {str(ref)[:100]!r} is not a version number or an alias as @name", key=key
    )


# -- aliases ----------------------------------------------------------------------------------


def _alias_target(session: Session, module_id: int, name: str) -> int | None:
    return session.scalar(
        select(ModelAliasRow.version).where(
            ModelAliasRow.module_id == module_id, ModelAliasRow.name == name
        )
    )


def _move(session: Session, module_id: int, name: str, to: int | None, by: str) -> int | None:
    """Point ``name`` at ``to`` (None: remove it) and keep the move; where it pointed."""
    before = _alias_target(session, module_id, name)
    if to is None:
        session.execute(
            delete(ModelAliasRow).where(
                ModelAliasRow.module_id == module_id, ModelAliasRow.name == name
            )
        )
    elif before is None:
        session.add(ModelAliasRow(module_id=module_id, name=name, version=to))
    else:
        session.execute(
            update(ModelAliasRow)
            .where(ModelAliasRow.module_id == module_id, ModelAliasRow.name == name)
            .values(version=to)
        )
    session.add(AliasMoveRow(module_id=module_id, alias=name, from_version=before,
                             to_version=to, at=now(), by=by))  # fmt: skip
    session.flush()
    return before


def move_alias(db: Database, module_id: int, name: str, version: Any) -> Aliases:
    """Point an alias at a version (made if new), as the current caller; the aliases after."""
    check_alias(name)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput("version: must be a version number", key="version")
    who = current().name
    with db.write() as session:
        row = _row(session, module_id, version)
        if row.removed:
            raise WrongState(f"version {version}'s files are gone with its module")
        before = _move(session, module_id, name, version, who)
        audit.record(session, who, "model.alias", f"module {module_id}", audit.OK,
                     f"{name}: {before or '-'} -> {version}")  # fmt: skip
    return aliases(db, module_id)


def remove_alias(db: Database, module_id: int, name: str) -> Aliases:
    """Remove an alias (its removal kept in the history), as the current caller."""
    check_alias(name)
    who = current().name
    with db.write() as session:
        if _alias_target(session, module_id, name) is None:
            raise NotFound(f"module {module_id} has no alias {name!r}")
        before = _move(session, module_id, name, None, who)
        audit.record(session, who, "model.alias", f"module {module_id}", audit.OK,
                     f"{name}: {before} -> removed")  # fmt: skip
    return aliases(db, module_id)


def aliases(db: Database, module_id: int) -> Aliases:
    """The aliases now and every move, oldest first."""
    with db.read() as session:
        now_ = dict(
            session.execute(
                select(ModelAliasRow.name, ModelAliasRow.version)
                .where(ModelAliasRow.module_id == module_id)
                .order_by(ModelAliasRow.name)
            ).all()
        )
        moves = session.scalars(
            select(AliasMoveRow)
            .where(AliasMoveRow.module_id == module_id)
            .order_by(AliasMoveRow.id)
        ).all()
        history = tuple(AliasMove(m.alias, m.from_version, m.to_version, m.at, m.by) for m in moves)
    return Aliases(now_, history)


# -- deleting ---------------------------------------------------------------------------------


def delete_version(db: Database, store: ModelStore, module_id: int, number: int) -> None:
    """Delete a version no alias points at and no queued or running task uses (409 else)."""
    with db.write() as session:
        row = _row(session, module_id, number)
        _check_unused(session, module_id, number)
        shas = {entry[1] for entry in row.contents}
        session.delete(row)
        audit.record(session, current().name, "model.delete", f"module {module_id}", audit.OK,
                     f"version {number} ({row.digest})")  # fmt: skip
    store.drop_version(module_id, number)
    free_blobs(db, store, shas)


def _check_unused(session: Session, module_id: int, number: int) -> None:
    names = [
        n
        for (n,) in session.execute(
            select(ModelAliasRow.name).where(
                ModelAliasRow.module_id == module_id, ModelAliasRow.version == number
            )
        )
    ]
    if names:
        raise WrongState(f"version {number} is aliased ({', '.join(names)}): move them first")
    users = session.scalars(
        select(TaskRow.id).where(
            TaskRow.module_id == module_id,
            TaskRow.model_version == number,
            TaskRow.status.in_(_ACTIVE),
        )  # fmt: skip
    ).all()
    if users:
        shown = ", ".join(str(u) for u in users[:10])
        raise WrongState(f"version {number} is used by queued or running task(s) {shown}")


def free_blobs(db: Database, store: ModelStore, candidates: set[str]) -> int:
    """Delete the stored files among ``candidates`` that no kept version uses."""
    if not candidates:
        return 0
    in_use: set[str] = set()
    with db.read() as session:
        for (contents,) in session.execute(
            select(ModelVersionRow.contents).where(ModelVersionRow.removed.is_(False))
        ):
            in_use.update(entry[1] for entry in contents)
    return store.free(candidates, in_use)


def keep_newest(db: Database, store: ModelStore, module_id: int, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` versions and the aliased ones (unused); the numbers."""
    if keep <= 0:
        return []
    with db.read() as session:
        numbers = session.scalars(
            select(ModelVersionRow.version)
            .where(ModelVersionRow.module_id == module_id, ModelVersionRow.removed.is_(False))
            .order_by(ModelVersionRow.version.desc())
        ).all()
        aliased = set(_aliases_by_version(session, module_id))
    dropped = []
    for number in numbers[keep:]:
        if number in aliased:
            continue
        try:
            delete_version(db, store, module_id, number)
            dropped.append(number)
        except WrongState:
            continue  # a task uses it: kept until the next training
    return dropped


def remove_module(db: Database, store: ModelStore, module_id: int) -> None:
    """A removed module's versions lose their files; their records stay."""
    with db.write() as session:
        shas: set[str] = set()
        for (contents,) in session.execute(
            select(ModelVersionRow.contents).where(ModelVersionRow.module_id == module_id)
        ):
            shas.update(entry[1] for entry in contents)
        session.execute(
            update(ModelVersionRow)
            .where(ModelVersionRow.module_id == module_id)
            .values(removed=True)
        )
    store.drop_module(module_id)
    free_blobs(db, store, shas)


def purge_module(session: Session, module_id: int) -> set[str]:
    """Forget a purged module's versions, aliases, history and counter (in its transaction).

    The stored files its versions used, for ``free_blobs`` once committed.
    """
    shas: set[str] = set()
    for (contents,) in session.execute(
        select(ModelVersionRow.contents).where(ModelVersionRow.module_id == module_id)
    ):
        shas.update(entry[1] for entry in contents)
    for table in (AliasMoveRow, ModelAliasRow, ModelVersionRow, ModelCounterRow):
        session.execute(delete(table).where(table.module_id == module_id))  # type: ignore[attr-defined]
    return shas
