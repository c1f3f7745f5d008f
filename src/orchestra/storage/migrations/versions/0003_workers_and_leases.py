"""Remote workers: who runs a task and its lease, the workers table, a module's lock; 64-bit ids.

Revision ID: 0003
Revises: 0002

``schema_info`` (the first release's version record) gives way to ``alembic_version``. On
PostgreSQL the ids become BIGINT (its INTEGER is 32-bit, SQLite's already 64-bit), their
sequences too.
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
    if op.get_bind().dialect.name == "postgresql":
        _ids_to(sa.BigInteger(), sa.Integer(), "bigint")


_IDS = (("modules", "id"), ("tasks", "id"), ("tasks", "module_id"))


def _ids_to(new: sa.types.TypeEngine, old: sa.types.TypeEngine, sequence_type: str) -> None:
    for table, column in _IDS:
        op.alter_column(table, column, type_=new, existing_type=old)
    for table in ("modules", "tasks"):
        op.execute(f"ALTER SEQUENCE IF EXISTS {table}_id_seq AS {sequence_type}")


def downgrade() -> None:
    """Undo ``upgrade``."""
    if op.get_bind().dialect.name == "postgresql":
        _ids_to(sa.Integer(), sa.BigInteger(), "integer")
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
