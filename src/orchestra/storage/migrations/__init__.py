"""Alembic migrations of Orchestra's database; ``storage.schema`` runs them at start-up.

``HEAD`` names the newest revision so that a start-up can tell, with one query and without
importing Alembic (~0.2 s), that a database is already up to date. A test checks that it
matches the scripts in ``versions/``: a new migration must move it.
"""

from __future__ import annotations

BASELINE = "0001"  # the schema of the first release (SCHEMA_VERSION 1, no alembic_version)
HEAD = "0008"
