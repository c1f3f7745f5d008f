"""Task history: forgetting ended tasks older than a retention period, on demand or periodically.

A removed module's row stays (status ``removed``) while tasks of it are kept; once pruning
has forgotten the last of them, the row goes too.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from orchestra.access import audit
from orchestra.access.caller import current
from orchestra.errors import InvalidInput
from orchestra.records import Pruned
from orchestra.storage.files import TaskFolder
from orchestra.storage.tables import TaskRow
from orchestra.tasks import lifecycle
from orchestra.tasks.status import FINAL

if TYPE_CHECKING:
    from orchestra.registry import Registry
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
RETENTION_INTERVAL = 3600.0  # seconds between a server's retention passes (one at start)
_BATCH = 500  # tasks forgotten per transaction


def prune_tasks(db: Database, registry: Registry, tasks_dir: Path, days: float) -> Pruned:
    """Forget ended tasks that ended more than ``days`` ago, with their folders."""
    if not 0 < days < 1e6:
        raise InvalidInput(f"older-than: {days!r} must be a positive number of days", key="days")
    cutoff = lifecycle.now() - timedelta(days=days)
    final = [status.value for status in FINAL]
    query = select(TaskRow.id).where(TaskRow.status.in_(final), TaskRow.finished < cutoff)
    forgotten = 0
    who = current().name

    def note(session: Any, ids: list[int]) -> None:
        audit.record(session, who, "tasks.prune", f"{len(ids)} task(s)", audit.OK,
                     f"ended over {days:g} days ago: ids {min(ids)} to {max(ids)}")  # fmt: skip

    while True:
        with db.connect() as connection:
            ids = list(connection.execute(query.limit(_BATCH)).scalars())
        deleted = lifecycle.delete_final(db, ids, note=note)
        for task_id in deleted:
            shutil.rmtree(TaskFolder(tasks_dir, task_id).root, ignore_errors=True)
        forgotten += len(deleted)
        if len(ids) < _BATCH or not deleted:
            break
    modules = registry.removal.drop_removed_without_tasks()
    if forgotten or modules:
        _LOGGER.info("pruned %d task(s) and %d removed module(s)", forgotten, modules)
    return Pruned(forgotten, modules, days)


class RetentionLoop:
    """A server's periodic pruning: once at start, then every ``RETENTION_INTERVAL``."""

    def __init__(self, prune: Callable[[float], object], days: float) -> None:
        self._prune = prune
        self._days = days
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orchestra-retention", daemon=True)

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop it and wait for a pass under way to end."""
        self._stopping.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._prune(self._days)
            except Exception:
                _LOGGER.exception("pruning old tasks failed")
            self._stopping.wait(RETENTION_INTERVAL)
