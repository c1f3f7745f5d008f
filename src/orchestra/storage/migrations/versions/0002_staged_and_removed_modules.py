"""Staged modules, and removed modules kept (by name) for their tasks' history.

Revision ID: 0002
Revises: 0001

``modules.staged`` hides a module from clients' list until it is published. A removed
module whose tasks are kept stays as a row with status ``removed``: its name is free again,
so the partial unique index on live names leaves out ``removed`` as well as ``error``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD_LIVE_NAME = "status != 'error'"
_LIVE_NAME = "status NOT IN ('error', 'removed')"


def upgrade() -> None:
    """Add ``modules.staged``; the live-name index leaves out removed modules."""
    op.add_column(
        "modules",
        sa.Column("staged", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    _live_name_index(_LIVE_NAME)


def downgrade() -> None:
    """Undo ``upgrade`` (removed modules' rows must be gone first)."""
    _live_name_index(_OLD_LIVE_NAME)
    with op.batch_alter_table("modules") as batch:
        batch.drop_column("staged")


def _live_name_index(where: str) -> None:
    op.drop_index("ix_modules_live_name", table_name="modules")
    op.create_index(
        "ix_modules_live_name", "modules", ["name"], unique=True,
        sqlite_where=sa.text(where), postgresql_where=sa.text(where),
    )  # fmt: skip
