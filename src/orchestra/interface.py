"""What the command line calls, offered alike by the local service and the remote client.

``Service`` (on the data folder) and ``client.Client`` (through the REST API) both satisfy
``Orchestra``: mypy checks it where the command line picks one, and a test compares their
signatures, so a method added to one and forgotten in the other fails at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from orchestra.records import (
    Aliases,
    AuditPage,
    ModelVersion,
    ModuleInfo,
    ModuleSummary,
    NewToken,
    Pruned,
    TaskInfo,
    TaskPage,
    TokenInfo,
)

Progress = Callable[[str], None]


class OutputStat(Protocol):
    """The facts of an output file that a download keeps."""

    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime(self) -> float: ...
    @property
    def st_mode(self) -> int: ...


class OutputFile(Protocol):
    """An output file, read like a local Path: a local one or one on the server."""

    def open(self, mode: str) -> IO[Any]: ...
    def stat(self) -> OutputStat: ...


class Orchestra(Protocol):
    """Modules and tasks, as the command line uses them."""

    def close(self) -> None: ...

    def register(
        self,
        source: str,
        *,
        ref: str | None = None,
        subdir: str | None = None,
        staged: bool = False,
        progress: Progress | None = None,
        as_of: str | None = None,
        python: str | None = None,
    ) -> ModuleInfo: ...

    def update(
        self,
        module_id: int,
        *,
        ref: str | None = None,
        archive: Path | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo: ...

    def publish(self, module_id: int) -> ModuleInfo: ...
    def stage(self, module_id: int) -> ModuleInfo: ...
    def remove(self, module_id: int, *, force: bool = False, purge: bool = False) -> None: ...
    def clear(self) -> None: ...
    def list_modules(self, *, everything: bool = False) -> list[ModuleSummary]: ...
    def get_module(self, module_id: int) -> ModuleInfo: ...
    def prune(self, older_than_days: float | None = None) -> Pruned: ...
    def run(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo: ...

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
    ) -> TaskPage: ...

    def get_task(self, task_id: int, *, wait: float = 0.0) -> TaskInfo: ...
    def kill(self, task_id: int) -> TaskInfo: ...
    def task_log(self, task_id: int) -> dict[str, str]: ...
    def task_outputs(self, task_id: int) -> Sequence[tuple[str, OutputFile]]: ...
    def task_votable(self, task_id: int, name: str | None = None) -> tuple[str, bytes]: ...
    def create_token(
        self, name: str, *, role: str, expires_days: float | None = None
    ) -> NewToken: ...
    def list_tokens(self) -> list[TokenInfo]: ...
    def revoke_token(self, name: str) -> TokenInfo: ...

    def audit_log(
        self,
        *,
        who: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> AuditPage: ...

    def train(self, module_id: int, args: Mapping[str, Any]) -> TaskInfo: ...
    def list_models(self, module_id: int) -> list[ModelVersion]: ...
    def get_model(self, module_id: int, version: int) -> ModelVersion: ...
    def download_model(self, module_id: int, version: int, target: Path) -> ModelVersion: ...
    def aliases(self, module_id: int) -> Aliases: ...

    def move_alias(self, module_id: int, name: str, version: int) -> Aliases: ...
    def remove_alias(self, module_id: int, name: str) -> Aliases: ...
