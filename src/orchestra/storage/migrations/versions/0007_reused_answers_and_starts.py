"""Answers reused and warm starts: tasks.reuse_key, tasks.reused_from, tasks.start.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the three columns and the index that finds an earlier answer."""
    # BIGINT on PostgreSQL like every id since 0003; SQLite's INTEGER is 64-bit already
    task_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.add_column("tasks", sa.Column("reuse_key", sa.String(64)))
    op.add_column("tasks", sa.Column("reused_from", task_id))
    op.add_column("tasks", sa.Column("start", sa.String(8)))
    op.create_index("ix_tasks_reuse_key", "tasks", ["reuse_key", "id"])


def downgrade() -> None:
    """Undo ``upgrade``."""
    op.drop_index("ix_tasks_reuse_key", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("start")
        batch.drop_column("reused_from")
        batch.drop_column("reuse_key")
