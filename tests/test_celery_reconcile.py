"""The reconciler against a real Redis and PostgreSQL: what a dead worker took is sent again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestra.config import load_settings
from orchestra.executors import celery as celery_executor
from orchestra.executors.celery import CeleryExecutor
from orchestra.storage.db import Database
from orchestra.storage.tables import ModuleRow
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import NewTask
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer


@pytest.fixture
def executor(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> Iterator[CeleryExecutor]:
    url = postgres_server.orchestra_database()
    settings = load_settings(
        {"home": tmp_path / "home", "database_url": url, "broker_url": redis_server.url(),
         "executor": "celery", "worker_lease": 5},
        environ={},
    )  # fmt: skip
    made = CeleryExecutor(settings)
    try:
        yield made
    finally:
        made.close()


def _queued_task(executor: CeleryExecutor) -> int:
    """A queued task row created a minute ago (older than the reconciler's grace)."""
    db = Database(executor.settings.db_url)
    try:
        with db.write() as session:
            session.add(
                ModuleRow(id=1, name="m", status="installed", source="/x", source_kind="folder",
                          created=lifecycle.now(), updated=lifecycle.now())
            )  # fmt: skip
        row, _ = lifecycle.create(db, NewTask(1, {}, 10, None, lambda i: {"task_id": i}))
        with db.begin_write() as connection:
            connection.execute(text("UPDATE tasks SET created = created - interval '1 minute'"))
        return row.id
    finally:
        db.dispose()


def _queue_tasks(executor: CeleryExecutor) -> list[int]:
    from orchestra.distributed.names import task_of_message

    messages = executor._client().lrange("default", 0, -1)
    return [task_of_message(json.loads(m)["headers"]["id"]) for m in messages]


def test_a_message_a_worker_took_and_never_claimed_is_sent_again(
    executor: CeleryExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = _queued_task(executor)
    assert executor._publish(task_id, "default")
    broker = executor._client()
    # what a worker does on delivery (kombu): the message leaves the queue for the unacked set
    message = broker.rpop("default")
    broker.hset("unacked", "tag-1", json.dumps([json.loads(message), "", "default"]))
    broker.zadd("unacked_index", {"tag-1": time.time()})
    monkeypatch.setattr(celery_executor, "BROKER_SCAN", 0.0)  # every call compares

    executor.reconcile()  # delivered a moment ago: its worker is about to claim the row
    assert _queue_tasks(executor) == []

    broker.zadd("unacked_index", {"tag-1": time.time() - 60})  # its worker died before claiming
    executor.reconcile()
    assert _queue_tasks(executor) == [task_id]


def test_a_broker_out_of_reach_is_told_once_and_its_return_once(
    executor: CeleryExecutor, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep compares every second: a broker that stays down must not flood the log."""
    executor.reconcile()  # reachable: nothing to tell
    redis_server.stop()
    with caplog.at_level("INFO", logger="orchestra.executors.celery"):
        for _ in range(3):
            executor.reconcile()
        lost = [r.getMessage() for r in caplog.records]
        assert len(lost) == 1 and "comparing the queue with the broker failed" in lost[0]
        caplog.clear()
        redis_server.start()
        for _ in range(3):
            executor.reconcile()
    back = [r.getMessage() for r in caplog.records]
    assert back == ["comparing the queue with the broker works again"]
