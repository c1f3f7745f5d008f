"""Submitting a task: check its arguments, fix what it runs, insert its row."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestra import catalogs
from orchestra.access.caller import current
from orchestra.executors import sandbox
from orchestra.executors.base import TaskSpec
from orchestra.manifest import Manifest, Param, argument_tail, coerce_value
from orchestra.tasks import lifecycle, requests, reuse
from orchestra.tasks.lifecycle import NewTask, TaskRecord

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.registry import Registry
    from orchestra.storage.db import Database
    from orchestra.storage.files import InstallFolder

_LOGGER = logging.getLogger(__name__)
_REMEMBERED = 1000  # modules whose installed generation is remembered at most


class Submitter:
    """Turns a run request into a task row, claimed at once where the local limit allows."""

    def __init__(
        self, settings: Settings, db: Database, registry: Registry, executor_name: str
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.executor_name = executor_name
        # what the registry last answered for each module a task was submitted to: a queued
        # task's insert checks it still holds (PostgreSQL), instead of a read before it
        self._installed: dict[int, tuple[Manifest, InstallFolder]] = {}

    def create(
        self,
        module_id: int,
        args: Mapping[str, Any],
        *,
        claim_for: str | None,
        slots: int = 0,
        kind: str = "run",
    ) -> tuple[TaskRecord, bool]:
        """Insert the task; with ``claim_for``, claim it for that name when one of ``slots``
        is free. Also says whether a slot was free (see ``lifecycle.create``).
        """
        if claim_for is not None:
            # it runs here: ORCHESTRA_SANDBOX=required refuses it now, leaving no row
            sandbox.require(self.settings)
        module_args, fresh = request_options(args)
        known = self._known(module_id, claim_for)
        manifest, install = known or self.registry.runnable(module_id)
        request = self._request(module_id, manifest, module_args, kind)
        generation = install.root.name
        model = request.model
        given = None if model is None else {"module_id": module_id, "version": model[0],
                                            "digest": model[1]}  # fmt: skip

        def build_spec(task_id: int) -> dict[str, Any]:
            spec = self.spec(task_id, module_id, manifest, generation, request.bound,
                             request.timeout)  # fmt: skip
            if given is not None or request.overrides:  # a plain run is built as before
                spec = dataclasses.replace(spec, model=given, **request.overrides)
            if spec.catalog and request.header:
                spec = dataclasses.replace(spec, catalog={**spec.catalog, "model": request.header})
            return {**spec.to_json(), **request.extra}

        caller = current()
        key = None
        if manifest.deterministic and kind == "run":  # the model version is part of the answer
            key = reuse.reuse_key(generation, request.bound, model[1] if model else None)
        new = NewTask(
            module_id, request.bound, request.timeout, generation, build_spec,
            self.executor_name, submitted_by=caller.name, user=caller.user,
            queue=request.overrides.get("queue", manifest.queue),
            max_queued=self.settings.max_queued_per_submitter, kind=kind, model=model,
            reuse_key=key, if_installed=known is not None,
        )  # fmt: skip
        if key is not None and not fresh:
            reused = self._reuse(new, key)
            if reused is not None:
                return reused, False
        limit = slots if claim_for is not None else None
        try:
            created = lifecycle.create(self.db, new, max_running=limit, worker=claim_for)
        except lifecycle.ModuleChanged:  # updated or removed since: read it again
            self._installed.pop(module_id, None)
            return self.create(module_id, args, claim_for=claim_for, slots=slots, kind=kind)
        self._remember(module_id, manifest, install)
        return created

    def _known(
        self, module_id: int, claim_for: str | None
    ) -> tuple[Manifest, InstallFolder] | None:
        """The module as last read, when the insert can check it (a queued task, PostgreSQL).

        Never for a deterministic module: an earlier answer may be reused without an insert.
        """
        if claim_for is not None or self.db.is_sqlite:
            return None
        found = self._installed.get(module_id)
        return None if found is None or found[0].deterministic else found

    def _remember(self, module_id: int, manifest: Manifest, install: InstallFolder) -> None:
        if len(self._installed) >= _REMEMBERED:
            self._installed.clear()  # a bound on memory; each is read again at its next run
        self._installed[module_id] = (manifest, install)

    def _request(
        self, module_id: int, manifest: Manifest, args: Mapping[str, Any], kind: str
    ) -> requests.Request:
        """The request checked against what the module declares for its kind."""
        if kind == "train":
            return requests.training(self, module_id, manifest, args)
        return requests.run(self, module_id, manifest, args)

    def _reuse(self, new: NewTask, key: str) -> TaskRecord | None:
        """A task done at once with an earlier answer's outputs, or None to run it."""
        tasks_dir = self.settings.tasks_dir
        source = reuse.earlier_answer(self.db, tasks_dir, key)
        if source is None:
            return None
        try:
            return lifecycle.create_reused(
                self.db,
                new,
                source,
                lambda task_id: reuse.share_outputs(tasks_dir, source, task_id),
            )
        except OSError as exc:  # deleted meanwhile, or a full disk: it runs instead
            _LOGGER.info("task %s's answer could not be shared (%s): running anew", source.id, exc)
            return None

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
            limits=manifest.limits or None, queue=manifest.queue, warm=manifest.warm,
        )  # fmt: skip


def request_options(args: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The module's arguments apart from the request options; whether ``fresh`` was asked."""
    given = dict(args)
    fresh = given.pop("fresh", None)
    return given, fresh is not None and coerce_value(Param("fresh", "bool"), fresh) == "true"
