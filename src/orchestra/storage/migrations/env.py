"""Alembic's entry point: migrate the connection that ``storage.schema`` hands over."""

from __future__ import annotations

from alembic import context

from orchestra.storage.tables import Base

# always the caller's connection, inside the caller's transaction (which holds the lock that
# keeps two starting servers from migrating at once); never an engine built from a URL here
connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters a table by copying it: batch mode does that when a migration needs it
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
