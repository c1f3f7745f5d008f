"""The engine and sessions: SQLite tuned for concurrent writers, or any SQLAlchemy URL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from orchestra.storage import schema

_LOGGER = logging.getLogger(__name__)


class Database:
    """Owns the engine; hands out short read and write transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
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
        with self.engine.connect() as connection:
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
        return create_engine(url, pool_pre_ping=True)
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
