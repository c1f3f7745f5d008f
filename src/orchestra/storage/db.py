"""The engine and sessions: SQLite tuned for concurrent writers, or any SQLAlchemy URL."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from orchestra.storage import schema

_LOGGER = logging.getLogger(__name__)
PING_AFTER_IDLE = 1.0  # seconds a pooled connection may lie unused before it is checked
# what every PostgreSQL connection asks for: a database created as SQL_ASCII (initdb without
# a UTF-8 locale) hands the driver bytes instead of text unless the connection asks for UTF-8
POSTGRES_CONNECT_ARGS = {"client_encoding": "utf8"}


class Database:
    """Owns the engine; hands out short read and write transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url)
        # a server database reads in autocommit: no BEGIN and ROLLBACK round trips around a
        # read (each statement sees committed data either way, at READ COMMITTED)
        self._read_engine = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        # writes on SQLite take the write lock up front (BEGIN IMMEDIATE) so that a
        # transaction that read first never fails with "database is locked" on upgrade
        self._write_engine = self.engine.execution_options(sqlite_immediate=True)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Bring the database to the current schema: create it, or migrate it in place."""
        # a read first: the common start, on an up-to-date database, takes no lock
        if not schema.is_current(self.engine):
            schema.ensure(self._write_engine)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success and rolled back on any error."""
        with self._write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A plain connection for short reads: cheaper than a session on hot paths."""
        with self._read_engine.connect() as connection:
            yield connection

    @contextmanager
    def begin_write(self) -> Iterator[Connection]:
        """A write transaction on a plain connection, committed on success."""
        with self._write_engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        connect_args = POSTGRES_CONNECT_ARGS if url.startswith("postgresql") else {}
        # the connection used last is taken first: the busy ones stay warm, the rest idle
        engine = create_engine(url, pool_use_lifo=True, connect_args=connect_args)
        _ping_when_idle(engine)
        return engine
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # let SQLAlchemy's begin event below issue BEGIN itself (pysqlite's own is deferred)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        immediate = connection.get_execution_options().get("sqlite_immediate")
        # straight to the driver: a statement through the engine costs ten times more, and
        # every task's transactions start here
        driver = connection.connection.driver_connection
        driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it lay idle for a while.

    A connection in steady use is known to work; pinging it at every checkout (SQLAlchemy's
    ``pool_pre_ping``) costs a round trip per transaction. One that lay idle may have been
    cut by a database restart: that one is pinged, and replaced when the ping fails. A
    restart in the middle of steady use fails one transaction, and SQLAlchemy then renews
    the whole pool.
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["returned"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        returned = record.info.get("returned")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE:
            return  # just made, or just used
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"the database connection is gone: {exc}") from exc
