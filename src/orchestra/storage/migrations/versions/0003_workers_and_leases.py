"""Remote workers: who runs a task and its lease, the workers table, a module's lock.

Revision ID: 0003
Revises: 0002

``schema_info`` (the first release's version record) gives way to ``alembic_version``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add tasks.worker, tasks.heartbeat, modules.lock and the workers table."""
    op.add_column("tasks", sa.Column("worker", sa.String(200)))
    op.add_column("tasks", sa.Column("heartbeat", sa.DateTime))
    op.add_column("modules", sa.Column("lock", sa.JSON))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("queues", sa.JSON, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("started", sa.DateTime, nullable=False),
        sa.Column("heartbeat", sa.DateTime, nullable=False),
    )
    op.drop_table("schema_info")


def downgrade() -> None:
    """Undo ``upgrade``."""
    op.create_table(
        "schema_info",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.execute("INSERT INTO schema_info (id, version) VALUES (1, 1)")
    op.drop_table("workers")
    op.drop_column("modules", "lock")
    op.drop_column("tasks", "heartbeat")
    op.drop_column("tasks", "worker")
