"""The one façade that the command line, the REST API and the dashboard call.

No Flask, no argparse here. Each concern is a part in a module of its own (``modules``,
``tasks``, ``transfers`` for workers, ``system``, ``access`` for tokens and the audit log);
``Service`` opens what they share, starts and stops a server's background work, and lists
below which part answers each call.

Importing the service imports no database layer (SQLAlchemy and the modules built on it): a
registration from the command line builds its environment while ``Backend`` opens the
database in a thread, so the parts import what reads or writes the database inside the
calls that use it (``tests/test_cli.py`` checks it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from orchestra.config import Settings
from orchestra.service.access import Access
from orchestra.service.backend import Backend
from orchestra.service.models import Models
from orchestra.service.modules import Modules, Progress
from orchestra.service.system import System
from orchestra.service.tasks import Tasks
from orchestra.service.transfers import Transfers

if TYPE_CHECKING:
    from orchestra.history import RetentionLoop
    from orchestra.registry import Registry
    from orchestra.storage.db import Database
    from orchestra.tasks.runner import TaskRunner

__all__ = ["Progress", "Service"]
_LOGGER = logging.getLogger(__name__)


class Service:
    """Modules, tasks, model versions, access, workers' transfers and the machine, for all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self._backend = Backend(settings)
        self._serving = False
        self._retention: RetentionLoop | None = None
        self.modules = modules = Modules(settings, self._backend)
        self.task_ops = tasks = Tasks(settings, self._backend)
        self.transfers = transfers = Transfers(settings, self._backend)
        self.system = system = System(settings, self._backend)
        self.access = access = Access(settings, self._backend)
        self.models = models = Models(settings, self._backend)
        # the table of contents: each call of the front ends, and the part that answers it
        self.register = modules.register
        self.register_in_background = modules.register_in_background
        self.update = modules.update
        self.update_in_background = modules.update_in_background
        self.publish = modules.publish
        self.stage = modules.stage
        self.remove = modules.remove
        self.clear = modules.clear
        self.list_modules = modules.list_modules
        self.get_module = modules.get_module
        self.run = tasks.run
        self.list_tasks = tasks.list_tasks
        self.get_task = tasks.get_task
        self.kill = tasks.kill
        self.delete_task = tasks.delete_task
        self.prune = tasks.prune
        self.task_outputs = tasks.task_outputs
        self.task_output_file = tasks.task_output_file
        self.task_votable = tasks.task_votable
        self.task_log = tasks.task_log
        self.train = models.train
        self.list_models = models.list_models
        self.get_model = models.get_model
        self.model_files = models.model_files
        self.download_model = models.download_model
        self.delete_model = models.delete_model
        self.aliases = models.aliases
        self.move_alias = models.move_alias
        self.remove_alias = models.remove_alias
        self.task_metrics = models.task_metrics
        self.module_package = transfers.module_package
        self.receive_output = transfers.receive_output
        self.append_log = transfers.append_log
        self.machine = system.machine
        self.pythons = system.pythons
        self.workers = system.workers
        self.finished_tasks = system.finished_tasks
        self.health = system.health
        self.create_token = access.create_token
        self.list_tokens = access.list_tokens
        self.revoke_token = access.revoke_token
        self.audit_log = access.audit_log

    @property
    def db(self) -> Database:
        """The database."""
        return self._backend.db

    @property
    def registry(self) -> Registry:
        """The module registry."""
        return self._backend.registry

    @property
    def tasks(self) -> TaskRunner:
        """The task runner."""
        return self._backend.runner

    def start(self) -> None:
        """Start the background work of a server: recovery, task runner, sweeps, retention."""
        from orchestra.executors import sandbox

        state = sandbox.require(self.settings)  # ORCHESTRA_SANDBOX=required: refuse without
        report = _LOGGER.info if state.active or state.mode == "off" else _LOGGER.warning
        report("task sandbox: %s", state.summary())
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
