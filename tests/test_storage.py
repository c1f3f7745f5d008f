"""The schema as each database gets it, and what loading it costs."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex

from orchestra.storage.tables import Base, add_postgresql_options


def _live_name_index_sql(dialect: object) -> str:
    table = Base.metadata.tables["modules"]
    index = next(i for i in table.indexes if i.name == "ix_modules_live_name")
    return str(CreateIndex(index).compile(dialect=dialect))  # type: ignore[arg-type]


def test_a_failed_or_removed_module_leaves_its_name_free_on_sqlite_and_postgresql() -> None:
    where = "WHERE status NOT IN ('error', 'removed')"
    assert _live_name_index_sql(sqlite.dialect()).endswith(where)
    add_postgresql_options()
    assert _live_name_index_sql(postgresql.dialect()).endswith(where)


def test_loading_the_schema_does_not_load_the_postgresql_dialect() -> None:
    code = (
        "import sys, orchestra.storage.db; print('sqlalchemy.dialects.postgresql' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
