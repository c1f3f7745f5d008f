"""Bringing a database to the current schema: create it, or upgrade it with Alembic.

A start-up on an up-to-date database costs one query: the revision stored in
``alembic_version`` is compared with ``migrations.HEAD`` and Alembic (~0.2 s to import) is
never loaded. A new, empty database gets the tables from the models and is stamped at head
(Alembic's own advice for a fresh database; a test checks that the migrations build the same
schema). A database made by the first release (``schema_info``, no ``alembic_version``) is
stamped with the baseline, then upgraded. All of it happens in one transaction that holds a
lock (SQLite's write lock, or a PostgreSQL advisory lock), so two servers starting at once
on one database never both migrate it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from orchestra.storage.migrations import BASELINE, HEAD
from orchestra.storage.tables import Base, add_postgresql_options

if TYPE_CHECKING:
    from alembic.config import Config

_LOGGER = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
_SCHEMA_LOCK = 0x6F7263686573  # an arbitrary key of the advisory lock: "orches"
# as Alembic itself makes it
_CREATE_VERSION_TABLE = (
    f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)
_SELECT_REVISION = text(f"SELECT version_num FROM {VERSION_TABLE}")


def stored_revision(connection: Connection) -> str | None:
    """The database's Alembic revision; None when it has none (new, or the first release)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(_SELECT_REVISION).scalar()


def is_current(engine: Engine) -> bool:
    """True when the database is already at ``HEAD`` (one cheap read, no lock)."""
    with engine.connect() as connection:
        return stored_revision(connection) == HEAD


def ensure(write_engine: Engine) -> None:
    """Create or upgrade the schema to ``HEAD`` under a lock (``write_engine`` takes it)."""
    with write_engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # held until the commit: a second server starting now waits, then finds it done
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        revision = stored_revision(connection)
        if revision == HEAD:
            return
        if revision is None and not _has_tables(connection):
            _create(connection)
            return
        if revision is None:
            _LOGGER.info("stamping a database of the first release as revision %s", BASELINE)
        upgrade(connection, stamp=BASELINE if revision is None else None)


def _has_tables(connection: Connection) -> bool:
    names = set(inspect(connection).get_table_names())
    return bool(names & {"modules", "tasks"})


def _create(connection: Connection) -> None:
    """A new database: the tables as the models define them, stamped at head."""
    if connection.dialect.name == "postgresql":
        add_postgresql_options()
    Base.metadata.create_all(connection)
    connection.execute(text(_CREATE_VERSION_TABLE))
    connection.execute(text(f"INSERT INTO {VERSION_TABLE} VALUES (:head)"), {"head": HEAD})


def upgrade(connection: Connection, *, stamp: str | None = None, target: str = "head") -> None:
    """Run the migrations on ``connection`` (in its transaction), after an optional stamp."""
    from alembic import command

    config = alembic_config(connection)
    if stamp is not None:
        command.stamp(config, stamp)
    _LOGGER.info("upgrading the database schema to %s", target)
    command.upgrade(config, target)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for Orchestra's scripts, bound to ``connection``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config
