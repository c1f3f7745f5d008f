"""Status moves: conditional, one transaction each, the queue limit held in the database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.dialects.sqlite.base import SQLiteDialect

from orchestra.config import Settings
from orchestra.errors import TooManyRequests
from orchestra.storage.db import Database
from orchestra.storage.tables import ModuleRow, TaskRow
from orchestra.tasks import lifecycle, workers
from orchestra.tasks.lifecycle import NewTask
from orchestra.tasks.status import Outcome, TaskStatus


@pytest.fixture(params=["sqlite", "sqlite-no-returning", "postgresql"])
def url(request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each database and each way to move a task: UPDATE … RETURNING, and older SQLite's reads."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    monkeypatch.setattr(SQLiteDialect, "update_returning", request.param == "sqlite")
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings.db_url


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    """A fresh database holding one module row for tasks to point at."""
    database = Database(url)
    database.create_schema()
    with database.write() as session:
        session.add(
            ModuleRow(
                id=1,
                name="m",
                status="installed",
                source="/x",
                source_kind="folder",
                created=lifecycle.now(),
                updated=lifecycle.now(),
            )  # fmt: skip
        )
    yield database
    database.dispose()


def _queue(db: Database, count: int) -> list[int]:
    rows = [
        lifecycle.create(db, NewTask(1, {}, 10, None, lambda i: {"id": i}))[0] for _ in range(count)
    ]
    return [row.id for row in rows]


def test_a_created_task_is_queued_with_its_spec(db: Database) -> None:
    (task_id,) = _queue(db, 1)
    claimed = lifecycle.claim_next(db, 5)
    assert claimed is not None and claimed.id == task_id
    assert claimed.status == TaskStatus.RUNNING and claimed.started is not None
    assert claimed.spec == {"id": task_id}


def _from_many_connections(url: str, count: int, act: Callable[[Database, int], None]) -> None:
    """``act(database, n)`` in ``count`` threads at once, each on a connection of its own, as
    separate processes or servers would."""
    others = [Database(url) for _ in range(count)]
    barrier = threading.Barrier(count)

    def run(database: Database, n: int) -> None:
        barrier.wait()
        act(database, n)

    threads = [threading.Thread(target=run, args=(d, n)) for n, d in enumerate(others)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for database in others:
        database.dispose()


def test_claims_from_many_connections_never_exceed_the_limit(db: Database, url: str) -> None:
    _queue(db, 20)
    claimed: list[int] = []

    def claim(database: Database, _n: int) -> None:
        for _ in range(10):
            row = lifecycle.claim_next(database, 3)
            if row is not None:
                claimed.append(row.id)

    _from_many_connections(url, 4, claim)
    assert len(claimed) == 3 and len(set(claimed)) == 3
    assert sorted(claimed) == [1, 2, 3]  # oldest first


def test_a_quota_holds_for_submissions_from_many_connections(db: Database, url: str) -> None:
    """Workers' servers submit without a slot lock: the quota's own lock keeps the count."""
    refused: list[int] = []

    def submit(database: Database, _n: int) -> None:
        for _ in range(4):
            new = NewTask(1, {}, 10, None, lambda i: {"id": i}, submitted_by="front",
                          max_queued=5)  # fmt: skip
            try:
                lifecycle.create(database, new)
            except TooManyRequests:
                refused.append(1)

    _from_many_connections(url, 6, submit)
    with db.connect() as connection:
        queued = connection.execute(select(func.count()).select_from(TaskRow)).scalar()
    assert (queued, len(refused)) == (5, 19)


def test_submissions_claiming_from_many_connections_never_exceed_the_limit(
    db: Database, url: str
) -> None:
    def submit(database: Database, _n: int) -> None:
        for _ in range(8):
            new = NewTask(1, {}, 10, None, lambda i: {"id": i})
            lifecycle.create(database, new, max_running=2, worker="server")
            lifecycle.claim_next(database, 2, "server")

    _from_many_connections(url, 6, submit)  # as several servers would
    with db.connect() as connection:
        statuses = dict(
            connection.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status)).all()
        )
    assert statuses == {"running": 2, "queued": 46}


def test_only_one_of_two_observers_settles_a_task(db: Database) -> None:
    _queue(db, 1)
    row = lifecycle.claim_next(db, 1)
    assert row is not None
    output = [{"name": "a.csv", "size": 3}]
    final = lifecycle.finish(db, row.id, Outcome(TaskStatus.DONE, 0, None, output))
    assert final is not None  # the row as the finish left it
    assert (final.id, final.status, final.exit_code, final.output) == (row.id, "done", 0, output)
    assert final.finished is not None and final.started == row.started
    assert lifecycle.finish(db, row.id, Outcome(TaskStatus.ERROR, None, "late")) is None
    assert lifecycle.read(db, row.id) == final


def test_a_finish_hands_its_slot_to_the_oldest_queued_task(db: Database) -> None:
    first, second, third = _queue(db, 3)
    running = lifecycle.claim_next(db, 1)
    assert running is not None and running.id == first
    assert lifecycle.claim_next(db, 1) is None  # the one slot is taken
    final, claimed = lifecycle.finish_and_claim(db, first, Outcome(TaskStatus.DONE, 0), 1)
    assert final is not None and final.status == "done"
    assert claimed is not None and (claimed.id, claimed.status) == (second, "running")
    assert claimed.spec == {"id": second} and claimed.started is not None
    late, none = lifecycle.finish_and_claim(db, first, Outcome(TaskStatus.ERROR), 1)
    assert (late, none) == (None, None)  # lost the race: nothing claimed either
    read = lifecycle.read(db, third)
    assert read is not None and read.status == "queued"


def test_killing_a_queued_task_drops_it_and_a_running_one_is_flagged(db: Database) -> None:
    first, second = _queue(db, 2)
    assert lifecycle.claim_next(db, 1) is not None
    assert lifecycle.request_kill(db, second) == TaskStatus.QUEUED
    assert lifecycle.claim_next(db, 5) is None  # the dropped one never starts
    assert lifecycle.request_kill(db, first) == TaskStatus.RUNNING
    flagged = lifecycle.read(db, first)
    assert flagged is not None and flagged.kill_requested and flagged.status == "running"


def test_a_worker_claims_a_given_queued_task_once_and_never_a_killed_one(db: Database) -> None:
    first, second = _queue(db, 2)
    claimed = lifecycle.claim(db, first, "w1")
    assert claimed is not None and (claimed.status, claimed.worker) == ("running", "w1")
    assert claimed.heartbeat is not None and claimed.started is not None
    assert lifecycle.claim(db, first, "w2") is None  # already running under w1
    assert lifecycle.request_kill(db, second) == TaskStatus.QUEUED
    assert lifecycle.claim(db, second, "w1") is None  # killed while queued: never starts
    assert lifecycle.claim(db, 999, "w1") is None


def test_of_many_workers_claiming_one_task_exactly_one_wins(db: Database, url: str) -> None:
    (task_id,) = _queue(db, 1)
    winners: list[str] = []

    def claim(database: Database, n: int) -> None:
        if lifecycle.claim(database, task_id, f"w{n}") is not None:
            winners.append(f"w{n}")

    _from_many_connections(url, 4, claim)
    assert len(winners) == 1
    row = lifecycle.read(db, task_id)
    assert row is not None and row.worker == winners[0]


def test_a_late_result_from_a_worker_never_revives_a_settled_task(db: Database) -> None:
    (task_id,) = _queue(db, 1)
    assert lifecycle.claim(db, task_id, "w1") is not None
    assert lifecycle.finish(db, task_id, Outcome(TaskStatus.DONE, 0), worker="w2") is None
    final = lifecycle.finish(db, task_id, Outcome(TaskStatus.ERROR, None, "lost"))
    assert final is not None and final.status == "error"
    assert lifecycle.finish(db, task_id, Outcome(TaskStatus.DONE, 0), worker="w1") is None
    row = lifecycle.read(db, task_id)
    assert row is not None and (row.status, row.error) == ("error", "lost")


def test_a_task_whose_lease_ran_out_ends_in_error_naming_its_worker(db: Database) -> None:
    stale, fresh, local = _queue(db, 3)
    assert lifecycle.claim(db, stale, "w-gone") is not None
    assert lifecycle.claim(db, fresh, "w-alive") is not None
    assert lifecycle.claim_next(db, 5, "server:1") is not None  # local: no lease
    with db.begin_write() as connection:
        connection.execute(
            update(TaskRow)
            .where(TaskRow.id == stale)
            .values(heartbeat=lifecycle.now() - timedelta(seconds=120))
        )
    settled = lifecycle.settle_lost(db, 60)
    assert [(r.id, r.status) for r in settled] == [(stale, "error")]
    assert settled[0].error == "worker w-gone lost: no heartbeat for 60 s"
    assert lifecycle.settle_lost(db, 60) == []
    statuses = [getattr(lifecycle.read(db, t), "status", None) for t in (fresh, local)]
    assert statuses == ["running", "running"]
    assert lifecycle.finish(db, stale, Outcome(TaskStatus.DONE, 0), worker="w-gone") is None


def test_renewing_a_workers_lease_keeps_its_tasks_and_names_those_to_kill(db: Database) -> None:
    first, second = _queue(db, 2)
    workers.register(db, "w1", queues=["default", "gpu"], concurrency=2, hostname="h")
    for task_id in (first, second):
        assert lifecycle.claim(db, task_id, "w1") is not None
    old = lifecycle.now() - timedelta(seconds=120)
    with db.begin_write() as connection:
        connection.execute(update(TaskRow).values(heartbeat=old))
    assert lifecycle.request_kill(db, second) == TaskStatus.RUNNING
    renewal = workers.renew(db, "w1")
    assert renewal.kills == (second,) and renewal.running == {first, second}
    assert lifecycle.settle_lost(db, 60) == []  # renewed just now
    (info,) = workers.list_workers(db)
    assert (info.name, info.queues, info.concurrency) == ("w1", ("default", "gpu"), 2)
    assert info.heartbeat > old
    workers.forget(db, "w1")
    assert workers.list_workers(db) == []


@pytest.mark.parametrize("url", ["postgresql"], indirect=True)
def test_an_insert_checked_against_the_module_writes_only_while_it_is_installed_so(
    db: Database,
) -> None:
    with db.write() as session:
        session.execute(update(ModuleRow).where(ModuleRow.id == 1).values(install_dir="g2"))

    def new(generation: str) -> NewTask:
        spec = lambda i: {"task_id": i, "generation": generation}  # noqa: E731
        return NewTask(1, {}, 10, generation, spec, if_installed=True)

    row, _ = lifecycle.create(db, new("g2"))
    read = lifecycle.read(db, row.id)
    assert read is not None and read.spec == row.spec == {"task_id": row.id, "generation": "g2"}
    with pytest.raises(lifecycle.ModuleChanged):  # updated since the submission read it
        lifecycle.create(db, new("g1"))
    with db.write() as session:
        session.execute(update(ModuleRow).where(ModuleRow.id == 1).values(status="removed"))
    with pytest.raises(lifecycle.ModuleChanged):
        lifecycle.create(db, new("g2"))
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(TaskRow)) == 1  # nothing written
