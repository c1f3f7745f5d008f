"""Remote workers in the database: who they are, and the leases they renew.

A worker announces itself (``register``) and then, every few seconds, ``renew``s its own
heartbeat and the lease of every task it runs, in one transaction; the answer names the
tasks whose kill was requested, so that a kill reaches a worker even if the prompt signal
was lost. A task whose lease is older than ``ORCHESTRA_WORKER_LEASE`` is settled by
``lifecycle.settle_lost`` (the only writer of a status); nothing here changes a status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, select, update

from orchestra.storage.db import Database
from orchestra.storage.tables import TaskRow, WorkerRow
from orchestra.tasks.lifecycle import now
from orchestra.tasks.status import TaskStatus

_RUNNING = TaskStatus.RUNNING.value
_RENEW_TASKS = (
    update(TaskRow)
    .where(TaskRow.worker == bindparam("worker_name"), TaskRow.status == _RUNNING)
    .values(heartbeat=bindparam("now"))
)
_RENEW_WORKER = (
    update(WorkerRow)
    .where(WorkerRow.name == bindparam("worker_name"))
    .values(heartbeat=bindparam("now"))
)
_MINE = select(TaskRow.id, TaskRow.kill_requested).where(
    TaskRow.worker == bindparam("worker_name"), TaskRow.status == _RUNNING
)


@dataclass(frozen=True)
class Renewal:
    """What a renewal found: the worker's running tasks, and those whose kill was asked."""

    running: frozenset[int]
    kills: tuple[int, ...]


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as it announced itself, and when it was last heard of."""

    name: str
    queues: tuple[str, ...]
    concurrency: int
    hostname: str
    started: datetime
    heartbeat: datetime


def register(
    db: Database, name: str, *, queues: Sequence[str], concurrency: int, hostname: str
) -> None:
    """Announce a worker (again, after a restart: the row is replaced)."""
    moment = now()
    with db.write() as session:
        session.execute(delete(WorkerRow).where(WorkerRow.name == name))
        session.add(
            WorkerRow(
                name=name,
                queues=list(queues),
                concurrency=concurrency,
                hostname=hostname,
                started=moment,
                heartbeat=moment,
            )  # fmt: skip
        )


def renew(db: Database, name: str) -> Renewal:
    """Renew the worker's heartbeat and its tasks' leases; what still runs, what to kill."""
    with db.begin_write() as connection:
        params = {"worker_name": name, "now": now()}
        connection.execute(_RENEW_WORKER, params)
        connection.execute(_RENEW_TASKS, params)
        mine = connection.execute(_MINE, params).all()
    return Renewal(frozenset(task_id for task_id, _ in mine),
                   tuple(task_id for task_id, kill in mine if kill))  # fmt: skip


def forget(db: Database, name: str) -> None:
    """Remove a worker that stopped cleanly."""
    with db.write() as session:
        session.execute(delete(WorkerRow).where(WorkerRow.name == name))


def list_workers(db: Database) -> list[WorkerInfo]:
    """Every announced worker, by name."""
    with db.read() as session:
        rows = session.scalars(select(WorkerRow).order_by(WorkerRow.name))
        return [
            WorkerInfo(r.name, tuple(r.queues), r.concurrency, r.hostname, r.started, r.heartbeat)
            for r in rows
        ]
