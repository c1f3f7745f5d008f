"""What the machine holds for Orchestra: free disk, environments, installer cache, load."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.records import _Record

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
SIZE_TTL = 30.0  # seconds a measured folder size is reused: walking a cache costs ~0.1 s


@dataclass(frozen=True)
class FolderSize(_Record):
    """Bytes under a folder: all files, and those linked nowhere else (its own share)."""

    bytes: int
    own_bytes: int
    files: int


@dataclass(frozen=True)
class EnvironmentUse(_Record):
    """One installed module's folder (code and environment) on disk."""

    module: int
    name: str | None
    folder: str
    size: FolderSize


@dataclass(frozen=True)
class WorkerLoad(_Record):
    """Who runs tasks: a remote worker as it announced itself, or a server running its own."""

    name: str
    running: int
    hostname: str | None = None  # None for a runner that never announced itself (a server)
    queues: tuple[str, ...] = ()
    concurrency: int | None = None
    heartbeat_age: float | None = None  # seconds since its last heartbeat
    lost: bool = False  # no heartbeat for longer than the lease


@dataclass(frozen=True)
class MachineInfo(_Record):
    """The machine as Orchestra sees it."""

    home: str
    disk_total: int
    disk_free: int
    environments: tuple[EnvironmentUse, ...]
    cache_folder: str
    cache: FolderSize
    executor: str
    max_running: int
    tasks: dict[str, int]
    workers: tuple[WorkerLoad, ...] = ()


class _SizeCache:
    """Folder sizes, each measured at most once per ``SIZE_TTL``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[float, FolderSize]] = {}

    def size(self, folder: Path) -> FolderSize:
        """The folder's size, measured again when the last figure is too old."""
        now = time.monotonic()
        with self._lock:
            known = self._known.get(folder)
        if known is not None and now - known[0] < SIZE_TTL:
            return known[1]
        measured = measure(folder)
        with self._lock:
            self._known[folder] = (now, measured)
        return measured


_SIZES = _SizeCache()


def measure(folder: Path) -> FolderSize:
    """Walk ``folder`` without following links; hard-linked files count once per walk."""
    total = own = files = 0
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed or unreadable meanwhile: count what is left
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            files += 1
            total += info.st_size
            own += info.st_size if info.st_nlink <= 1 else 0
    return FolderSize(total, own, files)


def installed_folders(db: Database) -> list[tuple[int, str | None, str]]:
    """(module id, name, folder name under installs/) of every module with a generation."""
    from sqlalchemy import select

    from orchestra.storage.tables import ModuleRow

    query = select(ModuleRow.id, ModuleRow.name, ModuleRow.install_dir).order_by(ModuleRow.id)
    with db.connect() as connection:
        return [(i, n, d) for i, n, d in connection.execute(query) if d]


def worker_loads(db: Database, lease: float) -> tuple[WorkerLoad, ...]:
    """Every announced worker and every other name running tasks, with its running count."""
    from sqlalchemy import func, select

    from orchestra.storage.tables import TaskRow
    from orchestra.tasks.workers import list_workers

    query = (
        select(TaskRow.worker, func.count())
        .where(TaskRow.status == "running", TaskRow.worker.is_not(None))
        .group_by(TaskRow.worker)
    )
    with db.connect() as connection:
        running = {str(name): int(count) for name, count in connection.execute(query)}
    moment = datetime.now(UTC).replace(tzinfo=None)
    loads = []
    for worker in list_workers(db):
        age = max(0.0, (moment - worker.heartbeat).total_seconds())
        loads.append(
            WorkerLoad(
                worker.name,
                running.pop(worker.name, 0),
                worker.hostname,
                worker.queues,
                worker.concurrency,
                age,
                age > lease,
            )  # fmt: skip
        )
    loads += [WorkerLoad(name, count) for name, count in sorted(running.items())]
    return tuple(loads)


def survey(
    settings: Settings,
    installed: Iterable[tuple[int, str | None, str]],
    tasks: dict[str, int],
    workers: tuple[WorkerLoad, ...] = (),
) -> MachineInfo:
    """Free disk, each environment's size, the installer cache and the task load."""
    settings.home.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(settings.home)
    environments = tuple(
        EnvironmentUse(module, name, folder, _SIZES.size(settings.installs_dir / folder))
        for module, name, folder in installed
    )
    return MachineInfo(
        home=str(settings.home),
        disk_total=disk.total,
        disk_free=disk.free,
        environments=environments,
        cache_folder=str(settings.uv_cache_dir),
        cache=_SIZES.size(settings.uv_cache_dir),
        executor=settings.executor,
        max_running=settings.max_running,
        tasks=tasks,
        workers=workers,
    )


def finished_since(db: Database, after: datetime | None) -> list[tuple[datetime, float]]:
    """(finished, seconds run) of each task that ended after ``after``, oldest first."""
    from sqlalchemy import select

    from orchestra.storage.tables import TaskRow

    query = (
        select(TaskRow.finished, TaskRow.started)
        .where(TaskRow.finished.is_not(None), TaskRow.started.is_not(None))
        .order_by(TaskRow.finished)
    )
    if after is not None:
        query = query.where(TaskRow.finished > after)
    with db.connect() as connection:
        rows = list(connection.execute(query))
    return [(end, max(0.0, (end - begin).total_seconds())) for end, begin in rows if end and begin]
