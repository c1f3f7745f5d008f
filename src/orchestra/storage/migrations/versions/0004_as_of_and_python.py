"""What an operator supplies for an older module: modules.as_of and modules.python_requested.

Revision ID: 0004
Revises: 0003

``as_of`` is ``install.resolve_as_of`` (a date or "commit") and ``python_requested`` is
``install.python_version``, given at registration for a module that does not declare them
and kept by its updates.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add modules.as_of and modules.python_requested."""
    op.add_column("modules", sa.Column("as_of", sa.String(32)))
    op.add_column("modules", sa.Column("python_requested", sa.String(32)))


def downgrade() -> None:
    """Undo ``upgrade``."""
    with op.batch_alter_table("modules") as batch:
        batch.drop_column("python_requested")
        batch.drop_column("as_of")
