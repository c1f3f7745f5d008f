"""Submitting a task: check its arguments, fix what it runs, insert its row."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestra import catalogs
from orchestra.access.caller import current
from orchestra.executors import sandbox
from orchestra.executors.base import TaskSpec
from orchestra.manifest import Manifest, argument_tail, bind_arguments
from orchestra.tasks import lifecycle
from orchestra.tasks.lifecycle import NewTask, TaskRecord

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.registry import Registry
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)


class Submitter:
    """Turns a run request into a task row, claimed at once where the local limit allows."""

    def __init__(
        self, settings: Settings, db: Database, registry: Registry, executor_name: str
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.executor_name = executor_name

    def create(
        self, module_id: int, args: Mapping[str, Any], *, claim_for: str | None, slots: int = 0
    ) -> tuple[TaskRecord, bool]:
        """Insert the task; with ``claim_for``, claim it for that name when one of ``slots``
        is free. Also says whether a slot was free (see ``lifecycle.create``).
        """
        if claim_for is not None:
            # it runs here: ORCHESTRA_SANDBOX=required refuses it now, leaving no row
            sandbox.require(self.settings)
        manifest, install = self.registry.runnable(module_id)
        bound = bind_arguments(manifest, args, max_length=self.settings.max_arg_length)
        timeout = manifest.timeout or self.settings.task_timeout
        generation = install.root.name

        def build_spec(task_id: int) -> dict[str, Any]:
            return self.spec(task_id, module_id, manifest, generation, bound, timeout).to_json()

        caller = current()
        new = NewTask(
            module_id, bound, timeout, generation, build_spec, self.executor_name,
            submitted_by=caller.name, user=caller.user, queue=manifest.queue,
            max_queued=self.settings.max_queued_per_submitter,
        )  # fmt: skip
        limit = slots if claim_for is not None else None
        return lifecycle.create(self.db, new, max_running=limit, worker=claim_for)

    def spec(
        self,
        task_id: int,
        module_id: int,
        manifest: Manifest,
        generation: str,
        bound: Mapping[str, str],
        timeout: float,
    ) -> TaskSpec:
        """What the task runs, named without any path of this machine."""
        return TaskSpec(
            task_id=task_id, module_id=module_id, generation=generation,
            executable=manifest.executable, args=tuple(argument_tail(bound)), timeout=timeout,
            grace=self.settings.kill_grace, outputs=manifest.output_files,
            catalog=catalogs.header_facts(manifest), network=manifest.network,
            limits=manifest.limits or None, queue=manifest.queue,
        )  # fmt: skip
