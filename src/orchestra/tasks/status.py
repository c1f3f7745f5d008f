"""Task status values and the moves allowed between them."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    KILLED = "killed"

    @property
    def is_final(self) -> bool:
        """True once the task can no longer change."""
        return self in FINAL


FINAL = frozenset({TaskStatus.DONE, TaskStatus.ERROR, TaskStatus.KILLED})

ALLOWED_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.KILLED, TaskStatus.ERROR}),
    TaskStatus.RUNNING: FINAL,
    TaskStatus.DONE: frozenset(),
    TaskStatus.ERROR: frozenset(),
    TaskStatus.KILLED: frozenset(),
}
