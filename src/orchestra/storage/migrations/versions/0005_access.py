"""Access: tokens with roles, the audit log, who submitted each task, fair share.

Revision ID: 0005
Revises: 0004

Tasks gain ``submitted_by`` and ``user`` (who asked), ``submitter`` (both as the one key that
fair share groups by) and ``queue`` (copied from the run specification so that a worker's
claim can pick within its queue through an index). Tasks made before have no known
submitter: they count as the command line's (``local``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_LIVE_TOKEN = "revoked IS NULL"
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add the task columns and indexes, the tokens and audit tables."""
    for name, size, default in (("submitted_by", 64, "local"), ("submitter", 270, "local"),
                                ("queue", 100, "default")):  # fmt: skip
        op.add_column(
            "tasks", sa.Column(name, sa.String(size), nullable=False, server_default=default)
        )
    op.add_column("tasks", sa.Column("user", sa.String(200)))
    _queues_from_specs()
    op.create_index("ix_tasks_status_submitter", "tasks", ["status", "submitter", "id"])
    op.create_index(
        "ix_tasks_status_queue_submitter", "tasks", ["status", "queue", "submitter", "id"]
    )
    op.create_index("ix_tasks_submitter_started", "tasks", ["submitter", "started"])
    _create_tokens()
    _create_audit()


def _queues_from_specs() -> None:
    """The queue of each task still waiting, as its run specification names it."""
    tasks = sa.table("tasks", sa.column("id"), sa.column("spec", sa.JSON),
                     sa.column("status"), sa.column("queue"))  # fmt: skip
    bind = op.get_bind()
    waiting = bind.execute(sa.select(tasks.c.id, tasks.c.spec).where(tasks.c.status == "queued"))
    for task_id, spec in list(waiting):
        queue = str((spec or {}).get("queue") or "default")
        if queue != "default":
            bind.execute(sa.update(tasks).where(tasks.c.id == task_id).values(queue=queue))


def _create_tokens() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("session_digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("expires", sa.DateTime),
        sa.Column("last_used", sa.DateTime),
        sa.Column("revoked", sa.DateTime),
    )
    op.create_index(
        "ix_tokens_live_name", "tokens", ["name"], unique=True,
        sqlite_where=sa.text(_LIVE_TOKEN), postgresql_where=sa.text(_LIVE_TOKEN),
    )  # fmt: skip


def _create_audit() -> None:
    op.create_table(
        "audit",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("who", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object", sa.String(300), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_who", "audit", ["who", "id"])
    op.create_index("ix_audit_action", "audit", ["action", "id"])


def downgrade() -> None:
    """Undo ``upgrade``."""
    op.drop_table("audit")
    op.drop_table("tokens")
    for index in ("ix_tasks_submitter_started", "ix_tasks_status_queue_submitter",
                  "ix_tasks_status_submitter"):  # fmt: skip
        op.drop_index(index, table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for column in ("user", "queue", "submitter", "submitted_by"):
            batch.drop_column(column)
