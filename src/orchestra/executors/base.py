"""The executor interface: where and how a task's process runs, nothing about its status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

Handle = dict[str, Any]  # JSON-ready identity of a started job, kept in the task row


class Executor(Protocol):
    """Starts, watches and kills task processes; task status stays in the database."""

    name: str

    def start(self, *, task_id: int, task_dir: Path, spec: dict[str, Any]) -> Handle:
        """Start the task described by ``spec``; return its handle."""
        ...

    def find(self, task_dir: Path) -> Handle | None:
        """The handle of the job started for ``task_dir``, from what the job itself recorded."""
        ...

    def is_alive(self, handle: Handle) -> bool:
        """True while the job behind ``handle`` has not ended."""
        ...

    def kill(self, handle: Handle, *, grace: float) -> None:
        """Ask the job to stop its whole process tree (SIGTERM, then SIGKILL after grace)."""
        ...

    def watch(self, handle: Handle, on_exit: Callable[[], None]) -> bool:
        """Call ``on_exit`` once when the job ends; False when this executor cannot watch."""
        ...

    def open(self) -> None:
        """Start background helpers (a server is running)."""
        ...

    def close(self) -> None:
        """Stop background helpers; jobs go on."""
        ...
