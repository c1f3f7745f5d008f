"""Creating and migrating the schema on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from orchestra.storage import schema
from orchestra.storage.db import Database
from orchestra.storage.migrations import BASELINE, HEAD
from orchestra.storage.tables import Base, add_postgresql_options
from tests.support.paths import ROOT


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orchestra.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _first_release_database(url: str) -> None:
    """A database as the first release left it: its tables and rows, no alembic_version."""
    engine = create_engine(url)
    with engine.begin() as connection:
        schema.upgrade(connection, target=BASELINE)
        connection.execute(text(f"DROP TABLE {schema.VERSION_TABLE}"))
        connection.execute(text("INSERT INTO schema_info (id, version) VALUES (1, 1)"))
        when = datetime(2026, 11, 1, 12, 0, 0)
        connection.execute(
            text(
                "INSERT INTO modules (id, name, status, description, source, source_kind,"
                " install_log, created, updated) VALUES (1, 'old', 'installed', 'd', '/src',"
                " 'folder', '', :when, :when)"
            ),
            {"when": when},
        )
        connection.execute(
            text(
                "INSERT INTO tasks (id, module_id, status, args, created, executor,"
                " kill_requested) VALUES (7, 1, 'done', '{\"start\": \"1\"}', :when, 'local',"
                " false)"
            ),
            {"when": when},
        )
    engine.dispose()


def test_the_head_revision_named_in_code_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(schema.alembic_config())
    assert scripts.get_heads() == [HEAD]
    assert scripts.get_base() == BASELINE


def test_a_new_database_is_created_at_head_and_a_second_start_changes_nothing(
    empty_url: str,
) -> None:
    db = Database(empty_url)
    db.create_schema()
    db.create_schema()
    with db.connect() as connection:
        assert schema.stored_revision(connection) == HEAD
        assert {"modules", "tasks"} <= set(inspect(connection).get_table_names())
    db.dispose()


def test_the_migrations_build_exactly_the_schema_of_the_models(empty_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(empty_url)
    if engine.dialect.name == "postgresql":
        add_postgresql_options()
    with engine.begin() as connection:
        schema.upgrade(connection)
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_a_database_of_the_first_release_is_stamped_and_upgraded_keeping_its_rows(
    empty_url: str,
) -> None:
    _first_release_database(empty_url)
    db = Database(empty_url)
    db.create_schema()
    with db.connect() as connection:
        assert schema.stored_revision(connection) == HEAD
        assert connection.execute(text("SELECT name FROM modules")).scalar() == "old"
        assert connection.execute(text("SELECT id, status FROM tasks")).one() == (7, "done")
    db.dispose()


def test_servers_starting_at_once_on_a_new_postgresql_database_all_succeed(
    postgres_url: str,
) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            db = Database(postgres_url)
            db.create_schema()
            db.dispose()
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_a_start_on_an_up_to_date_database_does_not_load_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orchestra.db'}"
    Database(url).create_schema()
    code = (
        "import sys; from orchestra.storage.db import Database;"
        f"Database({url!r}).create_schema(); print('alembic' in sys.modules)"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert found.stdout.strip() == "False"
