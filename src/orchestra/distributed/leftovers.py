"""What an earlier process of a worker left behind, settled when a worker of that name starts.

Its tasks still ``running`` in the database were lost with it (the lease could still hold
them, but their processes died with their lifeline); what still runs in its data folder, and
the folders themselves, are stopped and removed before the worker takes new tasks.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.status import Outcome, TaskStatus

if TYPE_CHECKING:
    from orchestra.executors.local import LocalExecutor
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)


def abandon_earlier(db: Database, name: str) -> None:
    """Tasks still running under this name were run by an earlier process of it: lost."""
    query = select(TaskRow.id).where(
        TaskRow.worker == name, TaskRow.status == TaskStatus.RUNNING.value
    )
    with db.read() as session:
        left = list(session.scalars(query))
    why = Outcome(TaskStatus.ERROR, None, f"worker {name} restarted while it ran")
    for task_id in left:
        if lifecycle.finish(db, task_id, why, worker=name) is not None:
            _LOGGER.warning("task %s was left running by an earlier run of it", task_id)


def stop_orphans(executor: LocalExecutor, root: Path) -> None:
    """Kill what an earlier process of this worker left running here, and its folders."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        handle = executor.find(int(child.name)) if child.name.isdigit() else None
        if handle is not None and executor.is_alive(handle):
            _LOGGER.warning("stopping task %s, left running by an earlier run", child.name)
            executor.kill(handle)
        shutil.rmtree(child, ignore_errors=True)
