"""Creating and migrating the schema on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from orchestra.config import Settings
from orchestra.storage import schema
from orchestra.storage.db import Database
from orchestra.storage.migrations import BASELINE, HEAD
from orchestra.storage.tables import Base, add_postgresql_options
from tests.support.paths import DATA, ROOT

RELEASE_1 = DATA / "release-1" / "home"  # made by tests/data/release-1/make.sh


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


def test_a_data_folder_of_the_first_release_upgrades_in_place_and_keeps_serving(
    settings: Settings,
) -> None:
    from uv import find_uv_bin

    from orchestra.service import Service

    shutil.copytree(RELEASE_1, settings.home)
    # the module's environment is machine-specific, so the fixture has none: build it again
    (generation,) = (settings.home / "installs").iterdir()
    subprocess.run(
        [find_uv_bin(), "venv", "--quiet", "--python", sys.executable, str(generation / "env")],
        check=True,
    )
    service = Service(settings)
    try:
        service.start()
        with service.db.connect() as connection:
            assert schema.stored_revision(connection) == HEAD
        (module,) = service.list_modules()
        assert (module.id, module.name, module.status) == (1, "release-one", "installed")
        done, failed, killed = (service.get_task(n) for n in (1, 2, 3))
        assert (done.status, [f.name for f in done.output or ()]) == ("done", ["result.csv"])
        assert (
            "start,2024-01-01\nstop,2024-01-02"
            in service.task_output_file(1, "result.csv").read_text()
        )
        assert service.task_log(1)["stdout"] == "release one ran\n"
        assert (failed.status, failed.exit_code) == ("error", 3)
        assert "a line on standard error" in (failed.error or "")
        assert killed.status == "killed"
        # queued by the release with its paths of the day: it runs here, where the folder is now
        queued = service.get_task(4, wait=30)
        assert queued.status == "done", queued.error
        assert service.task_output_file(4, "result.csv").read_text().startswith("code,0\n")
        new = service.get_task(service.run(1, {"start": "x"}).id, wait=30)
        assert (new.id, new.status) == (5, "done")
    finally:
        service.close()
