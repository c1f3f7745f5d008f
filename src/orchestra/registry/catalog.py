"""Reading the registry: the module list, one module, what a run needs; short-lived caches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select

from orchestra.access import audit
from orchestra.access.caller import current
from orchestra.errors import NotFound, WrongState
from orchestra.manifest import Manifest, parse_manifest
from orchestra.records import ModuleInfo, ModuleSummary
from orchestra.registry.rows import INSTALLED, REMOVED, check_id, info, now
from orchestra.storage.files import InstallFolder
from orchestra.storage.tables import ModuleRow

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

_NAME_CACHE_SECONDS = 2.0  # how long a task's module name may lag behind a change elsewhere
# prepared once: asked on every run request
_RUNNABLE = select(ModuleRow.status, ModuleRow.install_dir).where(
    ModuleRow.id == bindparam("module_id")
)


class Catalog:
    """The registered modules as clients and the task runner read them."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._lock = threading.Lock()
        self._manifests: dict[tuple[int, str], Manifest] = {}
        # module id -> (valid until, (name, status)): asked for every task shown
        self._names: dict[int, tuple[float, tuple[str | None, str]]] = {}

    def list(self, *, everything: bool = False) -> list[ModuleSummary]:
        """The modules clients see, oldest first; ``everything`` adds staged and removed ones."""
        query = select(ModuleRow).order_by(ModuleRow.id)
        if not everything:
            query = query.where(ModuleRow.staged.is_(False), ModuleRow.status != REMOVED)
        with self.db.read() as session:
            rows = session.scalars(query).all()
        return [info(row).summary() for row in rows]

    def get(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return info(self.row(module_id))

    def row(self, module_id: int) -> ModuleRow:
        """A module's row, or NotFound."""
        check_id(module_id)
        with self.db.read() as session:
            row = session.get(ModuleRow, module_id)
        if row is None:
            raise NotFound(f"no module {module_id}")
        return row

    def set_staged(self, module_id: int, staged: bool) -> ModuleInfo:
        """Hide a module from clients' list (stage) or show it (publish)."""
        check_id(module_id)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is None:
                raise NotFound(f"no module {module_id}")
            if row.status == REMOVED:
                raise WrongState(f"module {module_id} was removed")
            row.staged, row.updated = staged, now()
            action = "module.stage" if staged else "module.publish"
            audit.record(session, current().name, action, f"module {module_id}", audit.OK,
                         row.name or "")  # fmt: skip
        return self.get(module_id)

    def names(self, module_ids: Iterable[int]) -> dict[int, tuple[str | None, str]]:
        """Each module's name and status (a removed module keeps its name), cached briefly."""
        wanted = set(module_ids)
        moment = time.monotonic()
        with self._lock:
            found = {i: self._names[i][1] for i in wanted if self._names.get(i, (0.0,))[0] > moment}
        missing = wanted - set(found)
        if missing:
            query = select(ModuleRow.id, ModuleRow.name, ModuleRow.status)
            with self.db.connect() as connection:
                rows = connection.execute(query.where(ModuleRow.id.in_(missing))).all()
            with self._lock:
                for module_id, name, status in rows:
                    found[module_id] = (name, status)
                    self._names[module_id] = (moment + _NAME_CACHE_SECONDS, (name, status))
        return found

    def runnable(self, module_id: int) -> tuple[Manifest, InstallFolder]:
        """What the task runner needs to start a task; WrongState unless installed."""
        check_id(module_id)
        # every run request asks: a two-column read, the parsed metadata cached per generation
        with self.db.connect() as connection:
            found = connection.execute(_RUNNABLE, {"module_id": module_id}).first()
        if found is None:
            raise NotFound(f"no module {module_id}")
        status, install_dir = found
        if status != INSTALLED or install_dir is None:
            raise WrongState(f"module {module_id} is {status}, not installed")
        folder = InstallFolder(self.settings.installs_dir, install_dir)
        manifest = self._manifests.get((module_id, install_dir))
        if manifest is None:
            manifest = self._cache_manifest(self.installed_row(module_id))
        return manifest, folder

    def installed_row(self, module_id: int) -> ModuleRow:
        """A module's row, or WrongState unless it is installed."""
        row = self.row(module_id)
        if row.status != INSTALLED:
            raise WrongState(f"module {module_id} is {row.status}, not installed")
        return row

    def _cache_manifest(self, row: ModuleRow) -> Manifest:
        manifest = parse_manifest(row.meta)
        with self._lock:
            for old in [k for k in self._manifests if k[0] == row.id]:
                del self._manifests[old]
            self._manifests[(row.id, row.install_dir or "")] = manifest
        return manifest

    def forget(self, module_id: int) -> None:
        """Drop what is cached of a module (it was removed or replaced)."""
        with self._lock:
            for key in [k for k in self._manifests if k[0] == module_id]:
                del self._manifests[key]
            self._names.pop(module_id, None)
