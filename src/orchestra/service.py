"""The one façade that the command line and the REST API call. No Flask, no argparse here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestra import __version__
from orchestra.config import Settings
from orchestra.errors import WrongState
from orchestra.records import ModuleInfo, ModuleSummary, TaskInfo, TaskPage
from orchestra.registry import Registry
from orchestra.sources import SourceSpec
from orchestra.storage.db import Database
from orchestra.tasks.runner import TaskRunner

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]


class Service:
    """Modules and tasks, for any front end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.db_url)
        self.db.create_schema()
        self.registry = Registry(settings, self.db)
        self.tasks = TaskRunner(settings, self.db, self.registry)

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background work of a server: recovery, task runner, sweeps."""
        self.registry.recover()
        self.tasks.start()

    def close(self) -> None:
        """Stop background work; running tasks go on and are adopted at the next start."""
        self.tasks.stop()
        self.db.dispose()

    # -- modules --------------------------------------------------------------------------

    def register(
        self,
        source: str,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Install a module from a folder or git URL; atomic, returns when installed."""
        return self.registry.register(SourceSpec(source, ref, subdir), progress=progress)

    def register_in_background(
        self,
        source: str | None = None,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        archive: Path | None = None,
    ) -> ModuleInfo:
        """Accept a registration and install it in the background (status ``installing``)."""
        return self.registry.begin_register(SourceSpec(source or "", ref, subdir), archive=archive)

    def update(
        self, module_id: int, *, ref: str | None = None, progress: Progress | None = None
    ) -> ModuleInfo:
        """Re-install a module from its recorded source; the old one serves until the swap."""
        return self.registry.update(module_id, ref=ref, progress=progress)

    def remove(self, module_id: int, *, force: bool = False) -> None:
        """Remove a module with its files, environment and tasks."""
        self.registry.get(module_id)
        active = self.tasks.active_for_module(module_id)
        if active and not force:
            raise WrongState(
                f"module {module_id} has {len(active)} queued or running task(s); "
                "kill them first or force the removal"
            )
        self.tasks.forget_module(module_id)
        self.registry.remove(module_id)

    def clear(self) -> None:
        """Remove every module and task."""
        for module in self.registry.list():
            self.remove(module.id, force=True)

    def list_modules(self) -> list[ModuleSummary]:
        """Every module, installed or not, oldest first."""
        return self.registry.list()

    def get_module(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return self.registry.get(module_id)

    # -- tasks ----------------------------------------------------------------------------

    def run(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Check the arguments and queue a task (started at once when a slot is free)."""
        return self.tasks.submit(module_id, args)

    def list_tasks(
        self,
        *,
        status: str | None = None,
        module: int | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        """Tasks newest first, filtered and paginated."""
        return self.tasks.list(
            status=status, module=module, limit=limit, offset=offset, cursor=cursor
        )

    def get_task(self, task_id: int, *, wait: float = 0.0) -> TaskInfo:
        """One task; with ``wait``, answer once it is final or the time has passed."""
        return self.tasks.get(task_id, wait=wait)

    def kill(self, task_id: int) -> TaskInfo:
        """Stop a running task's whole process tree, or drop a queued one."""
        return self.tasks.kill(task_id)

    def delete_task(self, task_id: int) -> None:
        """Forget a finished task and its files."""
        self.tasks.delete(task_id)

    def task_outputs(self, task_id: int) -> list[tuple[str, Path]]:
        """The output files of a done task as (name, real path) pairs."""
        return self.tasks.output_files(task_id)

    def task_output_file(self, task_id: int, name: str) -> Path:
        """One output file, refusing any path that leaves the output folder."""
        return self.tasks.output_file(task_id, name)

    def task_log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far."""
        return self.tasks.log(task_id)

    def health(self) -> dict[str, Any]:
        """Liveness, version and counts."""
        return {
            "status": "ok",
            "version": __version__,
            "modules": len(self.registry.list()),
            "tasks": self.tasks.counts(),
        }
