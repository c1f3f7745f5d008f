"""The service's tasks: run, list, show, kill, delete, outputs, logs, pruning."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra.access.caller import current
from orchestra.access.roles import Role
from orchestra.errors import Forbidden, WrongState
from orchestra.records import Pruned, TaskInfo, TaskPage

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.service.backend import Backend


class Tasks:
    """Tasks for any front end, each shown with its module's name and status."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self._backend = backend

    def run(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo:
        """Check the arguments and queue a task (started at once when a slot is free)."""
        return self._named(self._backend.runner.submit(module_id, args))[0]

    def list_tasks(
        self,
        *,
        status: str | None = None,
        module: int | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
        submitted_by: str | None = None,
        user: str | None = None,
    ) -> TaskPage:
        """Tasks newest first, filtered and paginated."""
        page = self._backend.runner.list(
            status=status, module=module, limit=limit, offset=offset, cursor=cursor,
            submitted_by=submitted_by, user=user,
        )  # fmt: skip
        return dataclasses.replace(page, tasks=self._named(*page.tasks))

    def get_task(self, task_id: int, *, wait: float = 0.0) -> TaskInfo:
        """One task; with ``wait``, answer once it is final or the time has passed."""
        task = self._named(self._backend.runner.get(task_id, wait=wait))[0]
        if task.kind == "train" and task.status == "done":  # the version it made
            from orchestra.models.versions import made_by

            made = made_by(self._backend.db, task_id)
            task = dataclasses.replace(task, trained=made[0] if made else None)
        return task

    def kill(self, task_id: int) -> TaskInfo:
        """Stop a running task's whole process tree, or drop a queued one."""
        by = self._may_change(task_id, "kill")
        return self._named(self._backend.runner.kill(task_id, by=by))[0]

    def _may_change(self, task_id: int, action: str) -> str:
        """Who asks to kill or delete a task; Forbidden when only its submitter may.

        The ``run`` role may kill and delete the tasks it submitted; ``operate`` any task.
        """
        from orchestra.access import audit
        from orchestra.tasks import queries

        caller = current()
        if caller.may(Role.OPERATE):
            return caller.name
        row = queries.row(self._backend.db, task_id)
        if caller.may(Role.RUN) and row.submitted_by == caller.name:
            return caller.name
        audit.record_now(self._backend.db, caller.name, f"task.{action}", f"task {task_id}",
                         audit.REFUSED, f"submitted by {row.submitted_by}")  # fmt: skip
        raise Forbidden(
            f"task {task_id} was submitted by {row.submitted_by!r}: to {action} it needs the "
            f"role operate (token {caller.name!r} has {caller.role})"
        )

    def _named(self, *tasks: TaskInfo) -> tuple[TaskInfo, ...]:
        """The tasks with their module's name and status (a removed module keeps its name)."""
        names = self._backend.registry.names({task.module for task in tasks})
        return tuple(
            dataclasses.replace(t, module_name=names.get(t.module, (None, None))[0],
                                module_status=names.get(t.module, (None, None))[1])
            for t in tasks
        )  # fmt: skip

    def delete_task(self, task_id: int) -> None:
        """Forget a finished task and its files."""
        self._backend.runner.delete(task_id, by=self._may_change(task_id, "delete"))

    def prune(self, older_than_days: float | None = None) -> Pruned:
        """Forget ended tasks older than that (default: the retention setting) with their files."""
        from orchestra.history import prune_tasks

        days = self.settings.task_retention_days if older_than_days is None else older_than_days
        backend = self._backend
        return prune_tasks(backend.db, backend.registry, self.settings.tasks_dir, days)

    def task_outputs(self, task_id: int) -> list[tuple[str, Path]]:
        """The output files of a done task as (name, real path) pairs."""
        return self._backend.runner.output_files(task_id)

    def task_output_file(self, task_id: int, name: str) -> Path:
        """One output file, refusing any path that leaves the output folder."""
        return self._backend.runner.output_file(task_id, name)

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
        return f"{stem}.xml", catalog_votable(path)

    def task_log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far."""
        return self._backend.runner.log(task_id)


def catalog_votable(path: Path) -> bytes:
    """A checked catalog or time table output file as an IVOA VOTable."""
    from orchestra import catalogs

    kind = catalogs.kind_of(path)
    if kind is not None:
        return catalogs.to_votable(path, kind)
    raise WrongState(
        f"{path.name} is not a catalog or time table that Orchestra checked", key="format"
    )
