"""The module registry: register, update, remove, list, show; atomic, with recovery.

A module's row is the only pointer to its installed generation (``installs/<uuid>/``: code,
environment, log), which ``installer`` builds. A generation becomes visible in the one write
transaction that points the row at it; every failure removes what was built.

The parts, each in a module named for its job: ``catalog`` (reading), ``registering``,
``updating``, ``removing`` (removal, unused generations, recovery); ``rows`` holds what
they share. ``Registry`` puts them together and is what the rest of Orchestra holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestra.registry.catalog import Catalog
from orchestra.registry.registering import Background, Registration
from orchestra.registry.removing import Generations, Removal
from orchestra.registry.rows import ERROR, INSTALLED, INSTALLING, REMOVED
from orchestra.registry.updating import Updates

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

__all__ = ["ERROR", "INSTALLED", "INSTALLING", "REMOVED", "Registry"]


class Registry:
    """Registered modules and their installed generations, by concern."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._background = Background()
        self.catalog = Catalog(settings, db)
        self.generations = Generations(settings, db)
        self.registration = Registration(settings, db, self.catalog, self._background)
        self.removal = Removal(settings, db, self.catalog)
        self.updates = Updates(
            settings, db, self.catalog, (self.registration, self.generations, self._background)
        )
        # what the task runner and the service ask for most, by their short names
        self.get = self.catalog.get
        self.list = self.catalog.list
        self.names = self.catalog.names
        self.runnable = self.catalog.runnable

    def join_background(self, timeout: float | None = None) -> None:
        """Wait for the background installations started by this registry."""
        self._background.join(timeout)

    def recover(self) -> None:
        """Settle interrupted installations and remove unused generations (at start)."""
        self.generations.recover()
