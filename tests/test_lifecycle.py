"""Status moves: conditional, one transaction each, the queue limit held in the database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy.dialects.sqlite.base import SQLiteDialect

from orchestra.config import Settings
from orchestra.storage.db import Database
from orchestra.storage.files import TaskFolder
from orchestra.storage.tables import ModuleRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import Outcome
from orchestra.tasks.status import TaskStatus


@pytest.fixture(autouse=True, params=[True, False], ids=["returning", "no-returning"])
def update_returning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways to claim and finish: UPDATE … RETURNING, and the reads of older databases."""
    monkeypatch.setattr(SQLiteDialect, "update_returning", request.param)
    return bool(request.param)


@pytest.fixture
def db(settings: Settings) -> Database:
    """A fresh database holding one module row for tasks to point at."""
    settings.home.mkdir(parents=True, exist_ok=True)
    database = Database(settings.db_url)
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
    return database


def _queue(db: Database, count: int) -> list[int]:
    rows = [
        lifecycle.create(
            db, module_id=1, args={}, timeout=10, install_dir=None, build_spec=lambda i: {"id": i}
        )[0]
        for _ in range(count)
    ]
    return [row.id for row in rows]


def test_a_created_task_is_queued_with_its_spec(db: Database) -> None:
    (task_id,) = _queue(db, 1)
    claimed = lifecycle.claim_next(db, 5)
    assert claimed is not None and claimed.id == task_id
    assert claimed.status == TaskStatus.RUNNING and claimed.started is not None
    assert claimed.spec == {"id": task_id}


def test_claims_from_many_connections_never_exceed_the_limit(
    db: Database, settings: Settings
) -> None:
    _queue(db, 20)
    others = [Database(settings.db_url) for _ in range(4)]  # as separate processes would
    claimed: list[int] = []

    def claim(database: Database) -> None:
        for _ in range(10):
            row = lifecycle.claim_next(database, 3)
            if row is not None:
                claimed.append(row.id)

    threads = [threading.Thread(target=claim, args=(d,)) for d in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 3 and len(set(claimed)) == 3
    assert sorted(claimed) == [1, 2, 3]  # oldest first


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


def test_outputs_are_regular_files_inside_the_folder_only(tmp_path: Path) -> None:
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("aa")
    (out / "sub" / "b.txt").write_text("b")
    (tmp_path / "secret").write_text("outside")
    (out / "leak").symlink_to(tmp_path / "secret")
    (out / "alias").symlink_to(out / "a.txt")
    (out / "dirlink").symlink_to(tmp_path)
    names = [(f["name"], f["size"]) for f in lifecycle.scan_outputs(out)]
    assert names == [("a.txt", 2), ("alias", 2), ("sub/b.txt", 1)]


def test_the_stderr_tail_keeps_the_last_lines_only(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 1)
    folder.root.mkdir()
    folder.stderr.write_text("x" * 100_000 + "\n" + "".join(f"line {n}\n" for n in range(50)))
    tail = lifecycle.stderr_tail(folder).splitlines()
    assert tail == [f"line {n}" for n in range(30, 50)]


@pytest.mark.parametrize(
    ("result", "status", "error"),
    [
        ({"reason": "exited", "exit_code": 2}, "error", "exited with status 2"),
        ({"reason": "exited", "signal": 11}, "error", "killed by signal 11 (SIGSEGV)"),
        ({"reason": "timeout", "signal": 15}, "error", "timed out after 7 s"),
        ({"reason": "killed", "signal": 15}, "killed", "killed on request"),
        ({"reason": "start_failed", "error": "No such file"}, "error", "could not start: No such"),
    ],
)
def test_each_way_of_ending_is_explained(
    tmp_path: Path, result: dict[str, object], status: str, error: str
) -> None:
    folder = TaskFolder(tmp_path, 1)
    outcome = lifecycle.outcome_from_result(folder, result, {"timeout": 7})
    assert outcome.status == status
    assert (outcome.error or "").startswith(error)
