"""Reading what a task left in its folder: output files of a done task, and its logs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestra.errors import NotFound, WrongState
from orchestra.storage.db import Database
from orchestra.storage.files import TaskFolder, safe_join, tail_text
from orchestra.tasks import queries
from orchestra.tasks.lifecycle import TaskRecord
from orchestra.tasks.status import TaskStatus

LOG_BYTES = 1024 * 1024  # the end of each log that log() returns


class OutputReader:
    """A task's output files and logs, in this data folder (remote workers upload them)."""

    def __init__(self, tasks_dir: Path, db: Database, settle: Callable[[TaskRecord], bool]) -> None:
        self._tasks_dir = tasks_dir
        self._db = db
        self._settle = settle  # settles a running task nobody here watches; True if it did

    def _done_row(self, task_id: int) -> TaskRecord:
        row = queries.row(self._db, task_id)
        if row.status == TaskStatus.RUNNING and self._settle(row):
            row = queries.row(self._db, task_id)
        if row.status != TaskStatus.DONE:
            raise WrongState(f"task {task_id} is {row.status}, not done: it has no output")
        return row

    def files(self, task_id: int) -> list[tuple[str, Path]]:
        """A done task's output files as (name, real path) pairs."""
        row = self._done_row(task_id)
        base = TaskFolder(self._tasks_dir, task_id).output
        found = []
        for item in row.output or []:
            path = safe_join(base, str(item["name"]))
            if path.is_file():
                found.append((str(item["name"]), path))
        return found

    def file(self, task_id: int, name: str) -> Path:
        """One output file of a done task; NotFound for anything else."""
        row = self._done_row(task_id)
        if name not in {str(item["name"]) for item in row.output or []}:
            raise NotFound(f"task {task_id} has no output file {name!r}")
        path = safe_join(TaskFolder(self._tasks_dir, task_id).output, name)
        if not path.is_file():
            raise NotFound(f"task {task_id} has no output file {name!r}")
        return path

    def log(self, task_id: int) -> dict[str, str]:
        """Standard output and standard error so far (the last megabyte of each)."""
        queries.row(self._db, task_id)
        folder = TaskFolder(self._tasks_dir, task_id)
        return {"stdout": _log_tail(folder.stdout), "stderr": _log_tail(folder.stderr)}


def _log_tail(path: Path) -> str:
    text = tail_text(path, LOG_BYTES)
    try:
        cut = path.stat().st_size > LOG_BYTES
    except OSError:
        cut = False
    return f"[earlier output omitted]\n{text}" if cut else text
