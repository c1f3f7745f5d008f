"""The schema of the first release: schema_info, modules, tasks (SCHEMA_VERSION 1).

Revision ID: 0001
Revises: (none)

A database made by that release has these tables and no ``alembic_version``: start-up stamps
it with this revision, then upgrades it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LIVE_NAME = "status != 'error'"


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "schema_info",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    _modules()
    _tasks()


def _modules() -> None:
    op.create_table(
        "modules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("version", sa.String(100)),
        sa.Column("output_type", sa.String(100)),
        sa.Column("meta", sa.JSON),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.Text),
        sa.Column("subdir", sa.Text),
        sa.Column("commit", sa.String(64)),
        sa.Column("python_version", sa.String(32)),
        sa.Column("install_dir", sa.Text),
        sa.Column("install_log", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("installer_pid", sa.Integer),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
    )
    op.create_index(
        "ix_modules_live_name", "modules", ["name"], unique=True,
        sqlite_where=sa.text(_LIVE_NAME), postgresql_where=sa.text(_LIVE_NAME),
    )  # fmt: skip


def _tasks() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("module_id", sa.Integer, sa.ForeignKey("modules.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("started", sa.DateTime),
        sa.Column("finished", sa.DateTime),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("output", sa.JSON),
        sa.Column("timeout", sa.Double),
        sa.Column("install_dir", sa.Text),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("handle", sa.JSON),
        sa.Column("spec", sa.JSON),
        sa.Column("kill_requested", sa.Boolean, nullable=False),
    )
    op.create_index("ix_tasks_id", "tasks", ["id"])
    op.create_index("ix_tasks_status_id", "tasks", ["status", "id"])
    op.create_index("ix_tasks_module_id", "tasks", ["module_id", "id"])


def downgrade() -> None:
    """Drop everything."""
    for table in ("tasks", "modules", "schema_info"):
        op.drop_table(table)
