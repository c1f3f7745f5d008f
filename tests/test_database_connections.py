"""Connections to a real PostgreSQL that the server cuts: replaced without losing a write."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from orchestra.config import Settings, load_settings
from orchestra.distributed.worker import Worker
from orchestra.storage.db import PING_AFTER_IDLE, Database
from tests.support.helpers import wait_for
from tests.support.postgres import PostgresServer


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[Database]:
    db = Database(postgres_server.orchestra_database())
    try:
        yield db
    finally:
        db.dispose()


def _cut_connections(server: PostgresServer, db: Database) -> int:
    """End every server process of the database ``db`` uses, as a restart would; how many."""
    name = db.engine.url.database
    import psycopg

    dsn = f"host=127.0.0.1 port={server.port} user={db.engine.url.username} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as connection:
        ended = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        ).fetchall()
    return len(ended)


def _count_tasks(db: Database) -> int:
    with db.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM tasks")).scalar_one())


def test_a_connection_cut_while_idle_is_replaced_before_use(
    postgres_server: PostgresServer, database: Database
) -> None:
    assert _count_tasks(database) == 0
    assert _cut_connections(postgres_server, database) >= 1
    time.sleep(PING_AFTER_IDLE + 0.2)
    assert _count_tasks(database) == 0  # checked at checkout and replaced: no error


def test_a_connection_cut_in_steady_use_fails_once_then_the_pool_is_renewed(
    postgres_server: PostgresServer, database: Database
) -> None:
    assert _count_tasks(database) == 0
    _cut_connections(postgres_server, database)
    with pytest.raises(DBAPIError):
        _count_tasks(database)  # used a moment ago: not pinged, so this one fails
    assert _count_tasks(database) == 0


def test_reads_hold_no_transaction_open_and_writes_do(database: Database) -> None:
    # no BEGIN and ROLLBACK around a read: each costs a round trip to the database
    with database.connect() as connection:
        assert connection.connection.driver_connection.autocommit is True
    with database.read() as session:
        assert session.connection().connection.driver_connection.autocommit is True
    with database.begin_write() as connection:
        assert connection.connection.driver_connection.autocommit is False
    with database.write() as session:
        assert session.connection().connection.driver_connection.autocommit is False


def test_a_worker_writes_again_after_the_database_cut_its_connection(
    tmp_path: Path,
    postgres_server: PostgresServer,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings: Settings = load_settings({"home": tmp_path / "home"}, environ={})
    worker = Worker(settings, database, name="w", queues=["default"], concurrency=1)
    assert _count_tasks(database) == 0
    _cut_connections(postgres_server, database)
    with caplog.at_level(logging.WARNING, logger="orchestra.distributed.worker"):
        assert worker._persist(lambda: _count_tasks(database)) == 0
    assert "database out of reach" in caplog.text


def test_a_database_created_as_sql_ascii_works_and_keeps_text_whole(
    postgres_server: PostgresServer,
) -> None:
    # initdb's default without a UTF-8 locale, as in minimal containers: the server then
    # hands psycopg bytes instead of text unless the connection asks for UTF-8
    name = f"ascii_{id(postgres_server)}_{time.monotonic_ns()}"
    postgres_server.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'SQL_ASCII'")
    db = Database(postgres_server.url(name))
    try:
        db.create_schema()
        with db.begin_write() as connection:
            connection.execute(text("CREATE TABLE probe (word text)"))
            connection.execute(text("INSERT INTO probe VALUES (:word)"), {"word": "Événement α"})
        with db.connect() as connection:
            assert connection.execute(text("SELECT word FROM probe")).scalar_one() == "Événement α"
        assert _count_tasks(db) == 0
    finally:
        db.dispose()


def test_a_server_whose_database_is_away_tells_it_once_and_its_return_once(
    tmp_path: Path, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep runs every poll interval: a database away for minutes must not flood the log."""
    from orchestra.service import Service

    url = postgres_server.orchestra_database()
    name = url.rsplit("/", 1)[1]
    settings = load_settings(
        {"home": tmp_path / "home", "database_url": url, "poll_interval": 0.1}, environ={}
    )
    service = Service(settings)
    service.start()
    try:
        with caplog.at_level("WARNING", logger="orchestra.tasks.watching"):
            postgres_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            _cut_connections(postgres_server, service.db)
            time.sleep(1.5)  # some fifteen sweeps, each refused
            away = [r for r in caplog.records if "the task sweep" in r.getMessage()]
            assert len(away) == 1 and "failed" in away[0].getMessage()
            assert away[0].exc_info is not None  # the first failure comes with its traceback
            postgres_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            wait_for(
                lambda: [r.getMessage() for r in caplog.records[1:]],
                lambda found: found == ["the task sweep works again"],
                timeout=30, what="the sweep's return",
            )  # fmt: skip
            time.sleep(0.5)
        assert len(caplog.records) == 2
    finally:
        service.close()
