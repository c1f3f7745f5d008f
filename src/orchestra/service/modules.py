"""The service's modules: register, update, publish, stage, remove, list, show."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra import installer
from orchestra.access.caller import current
from orchestra.errors import NotFound, OrchestraError, WrongState
from orchestra.manifest import check_choices
from orchestra.records import ModuleInfo, ModuleSummary
from orchestra.sources import SourceSpec
from orchestra.storage import space

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service.backend import Backend

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]


class Modules:
    """Modules for any front end."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self._backend = backend

    def register(
        self,
        source: str,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        staged: bool = False,
        progress: Progress | None = None,
        as_of: str | None = None,
        python: str | None = None,
    ) -> ModuleInfo:
        """Install a module from a folder or git URL; atomic, returns when installed.

        ``as_of`` and ``python`` stand for ``install.resolve_as_of`` and
        ``install.python_version`` where the module does not declare them.
        """
        report = progress or _LOGGER.info
        with self._failures("module.register", f"module from {source}"):
            check_choices(as_of, python)
            space.require(self.settings, "registration")
            # built before the registry is asked for: it installs while the backend opens
            spec = SourceSpec(source, ref, subdir, as_of, python)
            built = installer.build(spec, self.settings, progress=report)
            registry = self._backend.registry
            return registry.registration.record(built, staged=staged, progress=report)

    @contextmanager
    def _failures(self, action: str, obj: str) -> Iterator[None]:
        """Leave a change that fails in the audit log (its success is written with it).

        The audit log's module (and SQLAlchemy) is imported only then: a registration from
        the command line builds the module while the database opens in the background.
        """
        try:
            yield
        except OrchestraError as exc:
            from orchestra.access import audit

            db, caller = self._backend.db, current().name
            audit.record_now(db, caller, action, obj, audit.FAILED, exc.message)
            raise

    def register_in_background(
        self,
        source: str | None = None,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        archive: Path | None = None,
        staged: bool = False,
        as_of: str | None = None,
        python: str | None = None,
    ) -> ModuleInfo:
        """Accept a registration and install it in the background (status ``installing``)."""
        shown = source or (archive.name if archive else "")
        with self._failures("module.register", f"module from {shown}"):
            check_choices(as_of, python)
            space.require(self.settings, "registration")
            spec = SourceSpec(source or "", ref, subdir, as_of, python)
            return self._backend.registry.registration.begin(spec, archive=archive, staged=staged)

    def update(
        self,
        module_id: int,
        *,
        ref: str | None = None,
        archive: Path | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Re-install from the recorded source or a new zip; the old one serves until the swap."""
        with self._failures("module.update", f"module {module_id}"):
            space.require(self.settings, "update")
            updates = self._backend.registry.updates
            return updates.update(module_id, ref=ref, archive=archive, progress=progress)

    def update_in_background(
        self, module_id: int, *, ref: str | None = None, archive: Path | None = None
    ) -> ModuleInfo:
        """Accept an update (also of a module in error) and install it in the background."""
        with self._failures("module.update", f"module {module_id}"):
            space.require(self.settings, "update")
            return self._backend.registry.updates.begin(module_id, ref=ref, archive=archive)

    def publish(self, module_id: int) -> ModuleInfo:
        """Show a staged module to clients."""
        with self._failures("module.publish", f"module {module_id}"):
            return self._backend.registry.catalog.set_staged(module_id, False)

    def stage(self, module_id: int) -> ModuleInfo:
        """Hide a module from clients' list again (operators still see it)."""
        with self._failures("module.stage", f"module {module_id}"):
            return self._backend.registry.catalog.set_staged(module_id, True)

    def remove(self, module_id: int, *, force: bool = False, purge: bool = False) -> None:
        """Remove a module; its tasks' records and outputs stay unless ``purge``."""
        with self._failures("module.remove", f"module {module_id}"):
            self._remove(module_id, force=force, purge=purge)

    def _remove(self, module_id: int, *, force: bool, purge: bool) -> None:
        registry, runner = self._backend.registry, self._backend.runner
        info = registry.get(module_id)
        active = runner.active_for_module(module_id)
        if active and not force:
            raise WrongState(
                f"module {module_id} has {len(active)} queued or running task(s); "
                "kill them first or force the removal"
            )
        if purge or not registry.removal.has_tasks(module_id):
            runner.forget_module(module_id)
            registry.removal.remove(module_id)
        elif info.status != "removed":
            for task_id in active:
                self._kill_quietly(task_id)
            registry.removal.retire(module_id)

    def _kill_quietly(self, task_id: int) -> None:
        try:
            self._backend.runner.kill(task_id)
        except (WrongState, NotFound):
            pass  # ended meanwhile

    def clear(self) -> None:
        """Remove every module and task."""
        for module in self._backend.registry.list(everything=True):
            self.remove(module.id, force=True, purge=True)

    def list_modules(self, *, everything: bool = False) -> list[ModuleSummary]:
        """The modules clients see, oldest first; ``everything`` adds staged and removed ones."""
        return self._backend.registry.list(everything=everything)

    def get_module(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return self._backend.registry.get(module_id)
