"""A model version's training task: cleared when that task is deleted.

Revision ID: 0008
Revises: 0007

SQLite gives a deleted newest task's id to the next task, so a version whose training task
was deleted named a newer, unrelated task (and that task, were it a training, found "its"
version already made). The link becomes a foreign key that deleting the task sets to NULL;
links already stale (no task, or a task created after the version) are cleared first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_FK = "fk_model_versions_task"


def upgrade() -> None:
    """Clear the stale links, then make the link a foreign key with ON DELETE SET NULL."""
    op.execute(
        sa.text(
            "UPDATE model_versions SET task_id = NULL WHERE task_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM tasks WHERE tasks.id = model_versions.task_id "
            "AND tasks.created <= model_versions.created)"
        )
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.create_foreign_key(_FK, "tasks", ["task_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    """Undo ``upgrade`` (the cleared links stay cleared)."""
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint(_FK, type_="foreignkey")
