"""The one façade that the command line and the REST API call. No Flask, no argparse here."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestra import __version__, installer
from orchestra.config import Settings
from orchestra.errors import NotFound, WrongState
from orchestra.records import ModuleInfo, ModuleSummary, Pruned, TaskInfo, TaskPage
from orchestra.sources import SourceSpec
from orchestra.storage import space

if TYPE_CHECKING:
    from datetime import datetime

    from orchestra.executors.sandbox import SandboxState
    from orchestra.history import RetentionLoop
    from orchestra.machine import MachineInfo, WorkerLoad
    from orchestra.registry import Registry
    from orchestra.storage.db import Database
    from orchestra.tasks.runner import TaskRunner

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]


class _Backend:
    """The database, the registry and the task runner, opened in a background thread.

    Importing SQLAlchemy and opening the database take about half a second on a slow
    machine; a registration from the command line installs the module meanwhile, since
    only its last step needs the database.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._parts: tuple[Database, Registry] | None = None
        self._runner: TaskRunner | None = None
        self._runner_lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, name="orchestra-open", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            from orchestra.registry import Registry
            from orchestra.storage.db import Database

            db = Database(self._settings.db_url)
            db.create_schema()
            self._parts = (db, Registry(self._settings, db))
        except BaseException as exc:  # noqa: B036 - raised again in the thread that asks
            self._error = exc

    def get(self) -> tuple[Database, Registry]:
        """The database and the registry; raises what opening them raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._parts is not None
        return self._parts

    def runner(self) -> TaskRunner:
        """The task runner, made on first use (a registration never needs one)."""
        db, registry = self.get()
        with self._runner_lock:
            if self._runner is None:
                from orchestra.tasks.runner import TaskRunner

                self._runner = TaskRunner(self._settings, db, registry)
            return self._runner

    def opened_runner(self) -> TaskRunner | None:
        """The task runner if one was made."""
        return self._runner


class Service:
    """Modules and tasks, for any front end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self._backend = _Backend(settings)
        self._serving = False
        self._retention: RetentionLoop | None = None

    @property
    def db(self) -> Database:
        """The database."""
        return self._backend.get()[0]

    @property
    def registry(self) -> Registry:
        """The module registry."""
        return self._backend.get()[1]

    @property
    def tasks(self) -> TaskRunner:
        """The task runner."""
        return self._backend.runner()

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background work of a server: recovery, task runner, sweeps, retention."""
        from orchestra.executors import sandbox

        state = sandbox.require(self.settings)  # ORCHESTRA_SANDBOX=required: refuse without
        report = _LOGGER.info if state.active or state.mode == "off" else _LOGGER.warning
        report("task sandbox: %s (%s)", "on" if state.active else "OFF", state.detail)
        self._serving = True
        self.registry.recover()
        self.tasks.start()
        if self.settings.task_retention_days > 0:
            from orchestra.history import RetentionLoop

            self._retention = RetentionLoop(self.prune, self.settings.task_retention_days)
            self._retention.start()

    def close(self) -> None:
        """Stop background work; running tasks go on and are adopted at the next start."""
        if self._serving:
            # a server's own background work ends with it; a command-line registration's
            # compilation is meant to outlive the command, so only a server stops them
            from orchestra import compiles

            if self._retention is not None:
                self._retention.stop()
                self._retention = None
            compiles.stop_own_compiles()
            self._serving = False
        try:
            db, _registry = self._backend.get()
        except Exception:  # never opened: its error was reported where it was used
            return
        tasks = self._backend.opened_runner()
        if tasks is not None:
            tasks.stop()
        db.dispose()

    # -- modules --------------------------------------------------------------------------

    def register(
        self,
        source: str,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        staged: bool = False,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Install a module from a folder or git URL; atomic, returns when installed."""
        report = progress or _LOGGER.info
        space.require(self.settings, "registration")
        # built before the registry is asked for, so that it installs while the backend opens
        built = installer.build(SourceSpec(source, ref, subdir), self.settings, progress=report)
        return self.registry.record(built, staged=staged, progress=report)

    def register_in_background(
        self,
        source: str | None = None,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        archive: Path | None = None,
        staged: bool = False,
    ) -> ModuleInfo:
        """Accept a registration and install it in the background (status ``installing``)."""
        space.require(self.settings, "registration")
        spec = SourceSpec(source or "", ref, subdir)
        return self.registry.begin_register(spec, archive=archive, staged=staged)

    def update(
        self,
        module_id: int,
        *,
        ref: str | None = None,
        archive: Path | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Re-install from the recorded source or a new zip; the old one serves until the swap."""
        space.require(self.settings, "update")
        return self.registry.update(module_id, ref=ref, archive=archive, progress=progress)

    def update_in_background(
        self, module_id: int, *, ref: str | None = None, archive: Path | None = None
    ) -> ModuleInfo:
        """Accept an update (also of a module in error) and install it in the background."""
        space.require(self.settings, "update")
        return self.registry.begin_update(module_id, ref=ref, archive=archive)

    def publish(self, module_id: int) -> ModuleInfo:
        """Show a staged module to clients."""
        return self.registry.set_staged(module_id, False)

    def stage(self, module_id: int) -> ModuleInfo:
        """Hide a module from clients' list again (operators still see it)."""
        return self.registry.set_staged(module_id, True)

    def remove(self, module_id: int, *, force: bool = False, purge: bool = False) -> None:
        """Remove a module; its tasks' records and outputs stay unless ``purge``."""
        info = self.registry.get(module_id)
        active = self.tasks.active_for_module(module_id)
        if active and not force:
            raise WrongState(
                f"module {module_id} has {len(active)} queued or running task(s); "
                "kill them first or force the removal"
            )
        if purge or not self.registry.has_tasks(module_id):
            self.tasks.forget_module(module_id)
            self.registry.remove(module_id)
        elif info.status != "removed":
            for task_id in active:
                self._kill_quietly(task_id)
            self.registry.retire(module_id)

    def _kill_quietly(self, task_id: int) -> None:
        try:
            self.tasks.kill(task_id)
        except (WrongState, NotFound):
            pass  # ended meanwhile

    def clear(self) -> None:
        """Remove every module and task."""
        for module in self.registry.list(everything=True):
            self.remove(module.id, force=True, purge=True)

    def list_modules(self, *, everything: bool = False) -> list[ModuleSummary]:
        """The modules clients see, oldest first; ``everything`` adds staged and removed ones."""
        return self.registry.list(everything=everything)

    def prune(self, older_than_days: float | None = None) -> Pruned:
        """Forget ended tasks older than that (default: the retention setting) with their files."""
        from orchestra.history import prune_tasks

        days = self.settings.task_retention_days if older_than_days is None else older_than_days
        return prune_tasks(self.db, self.registry, self.settings.tasks_dir, days)

    def get_module(self, module_id: int) -> ModuleInfo:
        """One module's full record."""
        return self.registry.get(module_id)

    # -- tasks ----------------------------------------------------------------------------

    def run(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Check the arguments and queue a task (started at once when a slot is free)."""
        return self._named(self.tasks.submit(module_id, args))[0]

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
        page = self.tasks.list(
            status=status, module=module, limit=limit, offset=offset, cursor=cursor
        )
        return dataclasses.replace(page, tasks=self._named(*page.tasks))

    def get_task(self, task_id: int, *, wait: float = 0.0) -> TaskInfo:
        """One task; with ``wait``, answer once it is final or the time has passed."""
        return self._named(self.tasks.get(task_id, wait=wait))[0]

    def kill(self, task_id: int) -> TaskInfo:
        """Stop a running task's whole process tree, or drop a queued one."""
        return self._named(self.tasks.kill(task_id))[0]

    def _named(self, *tasks: TaskInfo) -> tuple[TaskInfo, ...]:
        """The tasks with their module's name and status (a removed module keeps its name)."""
        names = self.registry.names({task.module for task in tasks})
        return tuple(
            dataclasses.replace(t, module_name=names.get(t.module, (None, None))[0],
                                module_status=names.get(t.module, (None, None))[1])
            for t in tasks
        )  # fmt: skip

    def delete_task(self, task_id: int) -> None:
        """Forget a finished task and its files."""
        self.tasks.delete(task_id)

    def task_outputs(self, task_id: int) -> list[tuple[str, Path]]:
        """The output files of a done task as (name, real path) pairs."""
        return self.tasks.output_files(task_id)

    def task_output_file(self, task_id: int, name: str) -> Path:
        """One output file, refusing any path that leaves the output folder."""
        return self.tasks.output_file(task_id, name)

    def task_votable(self, task_id: int, name: str | None = None) -> tuple[str, bytes]:
        """A done task's catalog or time table (its only output, or ``name``) as a VOTable."""
        if name is None:
            files = self.task_outputs(task_id)
            if len(files) != 1:
                raise WrongState(
                    f"task {task_id} has {len(files)} output files: name the one to convert",
                    key="format",
                )
            name, path = files[0]
        else:
            path = self.task_output_file(task_id, name)
        stem = Path(name).stem or "output"
        return f"{stem}.xml", self.catalog_votable(path)

    def catalog_votable(self, path: Path) -> bytes:
        """A checked catalog or time table output file as an IVOA VOTable."""
        from orchestra import catalogs

        kind = catalogs.kind_of(path)
        if kind is not None:
            return catalogs.to_votable(path, kind)
        raise WrongState(
            f"{path.name} is not a catalog or time table that Orchestra checked", key="format"
        )

    def task_log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far."""
        return self.tasks.log(task_id)

    # -- workers on other machines (SPEC §6) ----------------------------------------------

    def module_package(self, module_id: int, generation: str) -> tuple[Path, str]:
        """The zip of a module generation (code, metadata, lock) and its SHA-256."""
        from orchestra import artifacts

        return artifacts.package(self.settings, self.db, module_id, generation)

    def receive_output(
        self, task_id: int, name: str, body: IO[bytes], *, sha256: str, worker: str | None
    ) -> dict[str, Any]:
        """Store an output file that a worker sends for a running task."""
        from orchestra import artifacts

        return artifacts.receive_output(
            self.settings, self.db, task_id=task_id, name=name, body=body, sha256=sha256,
            worker=worker,
        )  # fmt: skip

    def append_log(
        self, task_id: int, stream: str, *, offset: int, data: bytes, worker: str | None
    ) -> int:
        """Append a chunk of a running remote task's log; the log's new size."""
        from orchestra import artifacts

        return artifacts.append_log(
            self.settings, self.db, task_id=task_id, stream=stream, offset=offset, data=data,
            worker=worker,
        )  # fmt: skip

    # -- the machine ----------------------------------------------------------------------

    def machine(self) -> MachineInfo:
        """Free disk, environments and their sizes, the installer cache, the task load."""
        from orchestra import machine

        return machine.survey(
            self.settings, machine.installed_folders(self.db), self.tasks.counts(),
            self.workers(),
        )  # fmt: skip

    def workers(self) -> tuple[WorkerLoad, ...]:
        """Remote workers and local runners, each with the tasks it runs now."""
        from orchestra import machine

        return machine.worker_loads(self.db, self.settings.worker_lease)

    def finished_tasks(self, after: datetime | None = None) -> list[tuple[datetime, float]]:
        """(finished, seconds run) of the tasks that ended after ``after``, oldest first."""
        from orchestra import machine

        return machine.finished_since(self.db, after)

    def health(self) -> dict[str, Any]:
        """Liveness, version and counts."""
        return {
            "status": "ok",
            "version": __version__,
            "modules": len(self.registry.list(everything=True)),
            "tasks": self.tasks.counts(),
            "sandbox": self._sandbox().describe(),
        }

    def _sandbox(self) -> SandboxState:
        from orchestra.executors import sandbox

        return sandbox.detect(self.settings.sandbox)
