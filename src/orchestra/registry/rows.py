"""What every part of the registry shares: module statuses, row building, id checks."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.errors import InstallError, NotFound, OrchestraError
from orchestra.limits import MAX_ID
from orchestra.records import ModuleInfo
from orchestra.storage.tables import ModuleRow, now

if TYPE_CHECKING:
    from orchestra.installer import Built
    from orchestra.sources import SourceSpec

_LOGGER = logging.getLogger(__name__)

INSTALLING, INSTALLED, ERROR, REMOVED = "installing", "installed", "error", "removed"
ACTIVE_TASKS = ("queued", "running")


def epoch(moment: datetime) -> float:
    """A stored time as seconds since the epoch."""
    return moment.replace(tzinfo=UTC).timestamp()


def log_progress(message: str) -> None:
    """Progress of a step where nobody watches: to the log."""
    _LOGGER.info("%s", message)


def check_id(module_id: object) -> None:
    """NotFound for anything that cannot be a module id (also out of the database's range)."""
    if isinstance(module_id, bool) or not isinstance(module_id, int):
        raise NotFound(f"no module {module_id!r}")
    if not 0 < module_id <= MAX_ID:
        raise NotFound(f"no module {module_id}")


def failure_text(exc: BaseException) -> tuple[str, str]:
    """A failed installation's one-line message and its installer log (or the message)."""
    message = exc.message if isinstance(exc, OrchestraError) else f"{type(exc).__name__}: {exc}"
    log = exc.log if isinstance(exc, InstallError) else ""
    return message, log


def _recorded_location(location: str) -> str:
    """A local folder as an absolute path, so ``update`` works from any directory."""
    path = Path(location).expanduser()
    if location and path.is_dir():
        return str(path.resolve())
    return location


def new_row(spec: SourceSpec, archive: Path | None, staged: bool = False) -> ModuleRow:
    """A row for a registration that has not got its name yet."""
    if archive is not None:
        source, kind = f"upload:{spec.location or archive.name}", "archive"
    else:
        source, kind = _recorded_location(spec.location), "folder"
    return ModuleRow(
        name=None, status=INSTALLING, description="", source=source, source_kind=kind,
        ref=spec.ref, subdir=spec.subdir, installer_pid=os.getpid(), install_log="",
        created=now(), updated=now(), staged=staged, as_of=spec.as_of,
        python_requested=spec.python,
    )  # fmt: skip


def apply_built(row: ModuleRow, built: Built) -> None:
    """Point a row at a built generation and copy what it records of it."""
    manifest = built.manifest
    row.install_dir = built.folder.root.name
    row.meta = manifest.raw
    row.description = manifest.description
    row.version = manifest.version
    row.output_type = manifest.output_type
    row.source_kind = built.fetched.kind
    row.commit = built.fetched.commit
    row.python_version = built.python_version
    # what every worker installs: the exact versions this registration resolved
    row.lock = {"python": built.python_version, "packages": list(built.lock)}
    if built.exclude_newer:
        row.lock["exclude_newer"] = built.exclude_newer
    row.install_log = built.log
    row.error = None
    row.updated = now()


def info(row: ModuleRow) -> ModuleInfo:
    """The record the service returns for a row."""
    return ModuleInfo(
        id=row.id, name=row.name, description=row.description or "", version=row.version,
        status=row.status, output_type=row.output_type, metadata=row.meta, source=row.source,
        source_kind=row.source_kind, ref=row.ref, subdir=row.subdir, commit=row.commit,
        python_version=row.python_version, created=row.created, updated=row.updated,
        error=row.error, install_log=row.install_log or "", lock=row.lock,
        staged=bool(row.staged), as_of=row.as_of, python_requested=row.python_requested,
    )  # fmt: skip
