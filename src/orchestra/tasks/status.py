"""Task status values, and the outcome that ends a task."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


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


@dataclass(frozen=True)
class Outcome:
    """How a task ended, as the side that ran it tells: what ``lifecycle.finish`` writes."""

    status: TaskStatus
    exit_code: int | None = None
    error: str | None = None
    output: list[dict[str, Any]] | None = None
    start: str | None = None  # warm or cold, as the supervisor started it (None: as claimed)
