"""Updating a module: a new generation built beside the old one, which serves until the swap."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from orchestra import installer
from orchestra.access import audit
from orchestra.access.caller import current
from orchestra.errors import InvalidInput, WrongState
from orchestra.records import ModuleInfo
from orchestra.registry.rows import (
    ERROR,
    INSTALLED,
    INSTALLING,
    REMOVED,
    apply_built,
    check_id,
    failure_text,
    log_progress,
    now,
)
from orchestra.sources import SourceSpec, precheck
from orchestra.storage.tables import ModuleRow

if TYPE_CHECKING:
    from orchestra.config import Settings
    from orchestra.installer import Built
    from orchestra.registry.catalog import Catalog
    from orchestra.registry.registering import Background, Registration
    from orchestra.registry.removing import Generations
    from orchestra.storage.db import Database

_LOGGER = logging.getLogger(__name__)
Progress = Callable[[str], None]


def lock_file(settings: Settings, module_id: int) -> Path:
    """The file whose lock a module's update holds (across processes)."""
    return settings.home / "locks" / f"module-{module_id}.lock"


class Updates:
    """Re-installing modules from their recorded source or a new archive."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        parts: tuple[Registration, Generations, Background],
    ) -> None:
        self.settings = settings
        self.db = db
        self._catalog = catalog
        self._registration, self._generations, self._background = parts

    def update(
        self,
        module_id: int,
        *,
        ref: str | None = None,
        archive: Path | None = None,
        progress: Progress | None = None,
    ) -> ModuleInfo:
        """Re-install from the recorded source (or ``archive``); the old one serves meanwhile."""
        with self._module_lock(module_id):
            return self._update_locked(module_id, ref, archive, progress or log_progress)

    def begin(
        self, module_id: int, *, ref: str | None = None, archive: Path | None = None
    ) -> ModuleInfo:
        """Accept an update (also of a module in ``error``) and install it in the background."""
        handle = self._take_lock(module_id)
        try:
            row = self._updatable_row(module_id)
            spec = _update_spec(row, ref, archive)
            precheck(spec, self.settings, archive=archive)
            if row.status == ERROR:  # nothing serves: it shows as installing meanwhile
                self._set_installing(module_id)
        except BaseException:
            _release(handle)
            raise
        self._background.start(
            self._update_in_background, module_id, ref, archive, handle,
            name=f"update-module-{module_id}",
        )  # fmt: skip
        return self._catalog.get(module_id)

    def _update_in_background(
        self, module_id: int, ref: str | None, archive: Path | None, handle: IO[str]
    ) -> None:
        try:
            # begin() showed a module in error as installing: this is that installation
            self._update_locked(module_id, ref, archive, log_progress, installing_ok=True)
        except BaseException as exc:  # noqa: B036 - recorded on the row, the client reads it
            _LOGGER.info("updating module %s failed: %s", module_id, exc)
            self._mark_failed(module_id, exc)
        finally:
            _release(handle)
            if archive is not None:
                archive.unlink(missing_ok=True)

    def _update_locked(
        self,
        module_id: int,
        ref: str | None,
        archive: Path | None,
        report: Progress,
        *,
        installing_ok: bool = False,
    ) -> ModuleInfo:
        row = self._updatable_row(module_id, installing_ok=installing_ok)
        spec = _update_spec(row, ref, archive)
        old_dir = row.install_dir
        built = installer.build(spec, self.settings, archive=archive, progress=report)
        try:
            self._swap(module_id, old_dir, built, spec.ref, archive)
        except BaseException:
            installer.abandon(built.folder)
            raise
        installer.completed(built, self.settings)
        self._catalog.forget(module_id)
        if old_dir:
            self._generations.drop(old_dir)
        self._generations.prune()
        report(f"updated {built.manifest.name} (module {module_id})")
        return self._catalog.get(module_id)

    def _updatable_row(self, module_id: int, *, installing_ok: bool = False) -> ModuleRow:
        row = self._catalog.row(module_id)
        allowed = (INSTALLED, ERROR, INSTALLING) if installing_ok else (INSTALLED, ERROR)
        if row.status not in allowed:
            raise WrongState(f"module {module_id} is {row.status}; it cannot be updated now")
        return row

    def _set_installing(self, module_id: int) -> None:
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.status, row.installer_pid, row.updated = INSTALLING, os.getpid(), now()

    def _mark_failed(self, module_id: int, exc: BaseException) -> None:
        with self.db.read() as session:
            row = session.get(ModuleRow, module_id)
        if row is None or row.status != INSTALLED:
            self._registration.mark_error(module_id, exc, "module.update")
            return
        # the old version goes on serving: the failure is told beside it
        message, log = failure_text(exc)
        with self.db.write() as session:
            row = session.get(ModuleRow, module_id)
            if row is not None:
                row.error = f"update failed: {message}"
                row.install_log = (row.install_log or "") + "\nupdate failed:\n" + (log or message)
                row.updated = now()
            audit.record(session, current().name, "module.update", f"module {module_id}",
                         audit.FAILED, message)  # fmt: skip

    def _swap(
        self,
        module_id: int,
        old_dir: str | None,
        built: Built,
        ref: str | None,
        archive: Path | None = None,
    ) -> None:
        try:
            with self.db.write() as session:
                row = session.get(ModuleRow, module_id)
                if row is None or row.install_dir != old_dir or row.status == REMOVED:
                    raise WrongState(f"module {module_id} changed while it was being updated")
                apply_built(row, built)
                row.name, row.ref = built.manifest.name, ref
                row.status, row.installer_pid = INSTALLED, None
                if archive is not None:
                    row.source, row.subdir = f"upload:{archive.name}", None
                audit.record(session, current().name, "module.update", f"module {module_id}",
                             audit.OK, f"{row.name} at {row.commit or row.source}")  # fmt: skip
        except IntegrityError:
            raise WrongState(
                f"a module named {built.manifest.name!r} already exists", key="name"
            ) from None

    @contextmanager
    def _module_lock(self, module_id: int) -> Iterator[None]:
        handle = self._take_lock(module_id)
        try:
            yield
        finally:
            _release(handle)

    def _take_lock(self, module_id: int) -> IO[str]:
        """The module's update lock (a file lock: it holds across processes), or WrongState."""
        check_id(module_id)
        path = lock_file(self.settings, module_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - released later
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise WrongState(f"module {module_id} is already being updated") from None
        return handle


def _release(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def _update_spec(row: ModuleRow, ref: str | None, archive: Path | None) -> SourceSpec:
    """What an update installs: the new archive, else the recorded source at ``ref``."""
    if archive is not None:
        if ref:
            raise InvalidInput("give either a ref or a new archive, not both", key="ref")
        return SourceSpec(archive.name, None, None)
    if row.source_kind == "archive":
        raise WrongState(
            f"module {row.id} was registered from an uploaded archive; "
            "upload the new version as an archive"
        )
    return SourceSpec(row.source, ref or row.ref, row.subdir, row.as_of, row.python_requested)
