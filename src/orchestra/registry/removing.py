"""Removing modules and settling what is left: retired rows, unused generations, recovery."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from orchestra import environments, installer
from orchestra.access import audit
from orchestra.access.caller import current
from orchestra.errors import NotFound, WrongState
from orchestra.executors import proctree
from orchestra.registry.rows import ACTIVE_TASKS, ERROR, INSTALLING, REMOVED, check_id, epoch, now
from orchestra.registry.updating import lock_file
from orchestra.storage.tables import ModuleRow, TaskRow

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.registry.catalog import Catalog
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)


class Generations:
    """Installed generation folders: dropped once nothing uses them."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def drop(self, name: str) -> None:
        """Remove a replaced generation unless a queued or running task still uses it."""
        with self.db.read() as session:
            used = session.scalar(
                select(TaskRow.id)
                .where(TaskRow.install_dir == name, TaskRow.status.in_(ACTIVE_TASKS))
                .limit(1)
            )
        if used is None:
            environments.remove_generation(self.settings.installs_dir / name)

    def prune(self) -> list[str]:
        """Remove generation folders that no module nor queued/running task points at."""
        installs = self.settings.installs_dir
        if not installs.is_dir():
            return []
        # look for build markers before reading the references: a build drops its marker
        # only after its commit, so a folder is either marked here or referenced below
        candidates = [p for p in installs.iterdir() if not installer.in_construction(p)]
        with self.db.read() as session:
            used = set(session.scalars(select(ModuleRow.install_dir)))
            used |= set(
                session.scalars(select(TaskRow.install_dir).where(TaskRow.status.in_(ACTIVE_TASKS)))
            )
        removed = [p.name for p in candidates if p.name not in used]
        for name in removed:
            _LOGGER.info("removing unused generation %s", name)
            environments.remove_generation(installs / name)
        return removed

    def recover(self) -> None:
        """Settle installations whose process is gone; remove what nobody uses."""
        with self.db.write() as session:
            rows = session.scalars(select(ModuleRow).where(ModuleRow.status == INSTALLING))
            for row in rows:
                if row.installer_pid and proctree.alive_since(
                    row.installer_pid, epoch(row.created)
                ):
                    continue
                reason = f"installation interrupted: its process ({row.installer_pid}) is gone"
                _LOGGER.warning("module %s: %s", row.id, reason)
                row.status, row.error, row.installer_pid = ERROR, reason, None
                row.install_log = (row.install_log or "") + reason + "\n"
                row.updated = now()
        self.prune()
        installer.clean_scratch(self.settings)


class Removal:
    """Taking modules away: with their row, or keeping it for their tasks' history.

    The model store's modules are imported where used: a registration from the command line
    waits for this package to load, and it never removes a module.
    """

    def __init__(self, settings: Settings, db: Database, catalog: Catalog) -> None:
        self.settings = settings
        self.db = db
        self._catalog = catalog

    def remove(self, module_id: int) -> None:
        """Remove a module's record, files and environment."""
        from orchestra.models import versions as models
        from orchestra.models.store import ModelStore

        check_id(module_id)
        try:
            with self.db.write() as session:
                row = session.get(ModuleRow, module_id)
                if row is None:
                    raise NotFound(f"no module {module_id}")
                install_dir = row.install_dir
                shas = models.purge_module(session, module_id)
                session.delete(row)
                audit.record(session, current().name, "module.remove", f"module {module_id}",
                             audit.OK, f"{row.name or ''}, with its tasks")  # fmt: skip
        except IntegrityError:
            raise WrongState(f"module {module_id} still has tasks; remove them first") from None
        self._drop_files(module_id, install_dir)
        store = ModelStore(self.settings.models_dir)
        store.drop_module(module_id)
        models.free_blobs(self.db, store, shas)

    def retire(self, module_id: int) -> None:
        """Remove a module but keep its row, as ``removed``, for its tasks' history."""
        from orchestra.models import versions as models
        from orchestra.models.store import ModelStore

        check_id(module_id)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is None:
                raise NotFound(f"no module {module_id}")
            install_dir = row.install_dir
            row.status, row.install_dir, row.staged = REMOVED, None, False
            audit.record(session, current().name, "module.remove", f"module {module_id}",
                         audit.OK, f"{row.name or ''}, its tasks kept")  # fmt: skip
            row.installer_pid, row.error, row.updated = None, None, now()
        self._drop_files(module_id, install_dir)
        models.remove_module(self.db, ModelStore(self.settings.models_dir), module_id)

    def _drop_files(self, module_id: int, install_dir: str | None) -> None:
        self._catalog.forget(module_id)
        if install_dir:
            environments.remove_generation(self.settings.installs_dir / install_dir)
        lock_file(self.settings, module_id).unlink(missing_ok=True)

    def has_tasks(self, module_id: int) -> bool:
        """Whether any task (of any status) belongs to the module."""
        with self.db.read() as session:
            query = select(TaskRow.id).where(TaskRow.module_id == module_id).limit(1)
            found = session.scalar(query)
        return found is not None

    def drop_removed_without_tasks(self) -> int:
        """Delete removed modules' rows once no task of theirs is left; how many."""
        from orchestra.models import versions as models

        with self.db.write() as session:
            orphans = select(ModuleRow.id).where(
                ModuleRow.status == REMOVED,
                ~select(TaskRow.id).where(TaskRow.module_id == ModuleRow.id).exists(),
            )
            ids = list(session.scalars(orphans))
            for module_id in ids:
                models.purge_module(session, module_id)  # their files went at the removal
            if ids:
                session.execute(delete(ModuleRow).where(ModuleRow.id.in_(ids)))
        return len(ids)
