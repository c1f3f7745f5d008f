"""Migration scripts, oldest first (Alembic reads them; a package so that they are installed)."""
