"""Training tasks and model versions.

Revision ID: 0006
Revises: 0005

Each task says its ``kind`` (``run`` or ``train``) and, for a run given a model version, that
version's number and digest. Model versions, the per-module counter that never gives a number
twice, aliases and every move of an alias get their tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add the tasks' kind and model columns and the model tables."""
    op.add_column("tasks", sa.Column("kind", sa.String(8), nullable=False, server_default="run"))
    op.add_column("tasks", sa.Column("model_version", sa.Integer))
    op.add_column("tasks", sa.Column("model_digest", sa.String(80)))
    _versions()
    op.create_table(
        "model_counters",
        sa.Column("module_id", _ID, sa.ForeignKey("modules.id"), primary_key=True),
        sa.Column("last", sa.Integer, nullable=False),
    )
    op.create_table(
        "model_aliases",
        sa.Column("module_id", _ID, sa.ForeignKey("modules.id"), primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "model_alias_moves",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("module_id", _ID, sa.ForeignKey("modules.id"), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("by", sa.String(200), nullable=False),
    )
    op.create_index("ix_model_alias_moves_module", "model_alias_moves", ["module_id", "id"])


def _versions() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("module_id", _ID, sa.ForeignKey("modules.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("contents", sa.JSON, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("task_id", _ID, unique=True),
        sa.Column("generation", sa.Text),
        sa.Column("commit", sa.String(64)),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("base", sa.Integer),
        sa.Column("removed", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_model_versions_module_version", "model_versions", ["module_id", "version"], unique=True
    )


def downgrade() -> None:
    """Undo ``upgrade``."""
    op.drop_index("ix_model_alias_moves_module", "model_alias_moves")
    op.drop_table("model_alias_moves")
    op.drop_table("model_aliases")
    op.drop_table("model_counters")
    op.drop_index("ix_model_versions_module_version", "model_versions")
    op.drop_table("model_versions")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("model_digest")
        batch.drop_column("model_version")
        batch.drop_column("kind")
